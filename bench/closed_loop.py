"""Issue 10's proof that it learns, part 3: two closed rounds through the platform itself. Run by
bench/closed_loop.sh, which starts Redis, a real Celery worker and the web server; this script drives them.

    prompts  HH-RLHF helpful-base prompts (single-turn) → a prompt file for create_project
    drive    round 0's candidates from the base (a generate job), then twice: simulated labelers over HTTP
             (manage.py simulate_labelers with --oracle/--demonstrator), a round (SFT → RM → PPO, or the path
             in --config, e.g. {"path": "rloo"}; then evaluate → generate) run by the worker; waits on the
             database, printing each job's progress
    evaluate base, each round's SFT and RL (PPO, RLOO or DPO) policies on the project's held-out (test split)
             prompts and on --unseen prompts the project never imported, --samples each with the same seeds
             for every policy (common random numbers), scored by --score, the function the labelers'
             rankings come from; per-prompt means, paired differences with standard errors over prompts
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RL_STAGES = ("ppo", "rloo", "dpo")  # the policy stage of each round path (annotation.loop.config.PATHS)
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]


def prompts(args) -> None:
    from training import sources

    seen, rows = set(), []
    for e in sources.hh_rankings(ROOT.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"):
        if len(e.prompt) == 1 and e.prompt[0]["content"] not in seen:  # single-turn: one user message
            seen.add(e.prompt[0]["content"])
            rows.append({"text": e.prompt[0]["content"]})
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows[:args.count]))
    print(f"{min(len(rows), args.count)} prompts → {args.out}")
    if args.unseen_out:  # the next prompts of the same file, never imported: held out from the project entirely
        unseen = rows[args.count:args.count + args.unseen]
        args.unseen_out.write_text("".join(json.dumps(r) + "\n" for r in unseen))
        print(f"{len(unseen)} unseen prompts → {args.unseen_out}")


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlhf_platform.settings")
    import django

    django.setup()


def wait_for(jobs_of, what: str, poll: float = 5.0) -> None:
    """Poll until every job of ``jobs_of()`` has ended; print each job's progress as it changes."""
    from annotation.models import TrainingJob

    shown: dict[int, str] = {}
    started = time.perf_counter()
    while True:
        jobs = list(jobs_of())
        for job in jobs:
            line = f"{job.stage} {job.status} {job.step}/{job.total}"
            if shown.get(job.pk) != line:
                shown[job.pk] = line
                print(f"  [{time.perf_counter() - started:6.0f} s] {what}: job #{job.pk} {line}", flush=True)
        if jobs and all(j.is_finished for j in jobs) and not _more_to_come(jobs):
            failed = [j for j in jobs if j.status != TrainingJob.Status.SUCCEEDED]
            if failed:
                sys.exit(f"{what}: job #{failed[0].pk} ({failed[0].stage}) {failed[0].status}: "
                         f"{failed[0].failure_reason}")
            return
        time.sleep(poll)


def _more_to_come(jobs) -> bool:
    round_ = jobs[0].round
    if round_ is None:
        return False
    round_.refresh_from_db()
    return round_.status == round_.Status.TRAINING


def drive(args) -> None:
    setup_django()
    from django.core.management import call_command

    from annotation.loop import rounds
    from annotation.models import Project, Round, TrainingJob

    project = Project.objects.get(name=args.project)
    base = project.base_model
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if args.resume:  # a drive that was stopped: settle its dead jobs, requeue them, let the open round finish
        from annotation.loop import broker, worker

        print(f"resume: settled {worker.sweep_dead_jobs()}, requeued {broker.requeue_lost_jobs(min_age_seconds=0)}",
              flush=True)
        for open_round in Round.objects.filter(project=project, status=Round.Status.TRAINING):
            wait_for(lambda r=open_round: TrainingJob.objects.filter(round=r), f"round {open_round.number} (resumed)")
        timings["resumed round"] = time.perf_counter() - started
    else:
        job = rounds.start_stage(project=project, stage="generate", inputs=[base],
                                 config={"prompts": args.first_prompts, "held_out_prompts": "auto"})
        wait_for(lambda: TrainingJob.objects.filter(pk=job.pk), "round 0 candidates")
        timings["round 0 candidates"] = time.perf_counter() - started
    config = json.loads(args.config) if args.config else {}
    # (a finished round leaves the next one collecting labels: that one still has to run)
    for number in range(Round.objects.filter(project=project, status=Round.Status.FINISHED).count() + 1, 3):
        started = time.perf_counter()
        call_command("simulate_labelers", project=str(project.pk), oracle=args.oracle, demonstrator=args.demonstrator,
                     labelers=args.labelers, url=args.url, seed=number, verbosity=1)
        timings[f"round {number} labels"] = time.perf_counter() - started
        started = time.perf_counter()
        round_ = rounds.start_round(project=project, config={"preset": args.preset, **config})
        wait_for(lambda r=round_: TrainingJob.objects.filter(round=r), f"round {round_.number}")
        timings[f"round {number} training"] = time.perf_counter() - started
        round_ = Round.objects.get(pk=round_.pk)
        print(f"round {round_.number}: {round_.status}; {round_.gate_note}", flush=True)
    (Path(args.out)).write_text(json.dumps({"timings_s": {k: round(v, 1) for k, v in timings.items()}}, indent=2))


def evaluate(args) -> None:
    setup_django()
    from annotation.loop.snapshots import prompt_payload
    from annotation.management.commands.simulate_labelers import load_callable
    from annotation.models import ModelVersion, Project, Prompt, Round, TrainingJob
    from training.config import GenerateConfig
    from training.evaluate import mean_stderr, paired
    from training.generate import generate
    from training.models import load_causal_lm, load_tokenizer

    score = load_callable(args.score, "score")
    project = Project.objects.get(name=args.project)
    # (what the model is given, the text the score function reads)
    pairs = [(prompt_payload(p), p.text) for p in Prompt.objects.filter(project=project, split="test").order_by("id")]
    if args.unseen:  # prompts the project never saw, after its own test-split ones
        pairs += [(t, t) for t in (json.loads(line)["text"] for line in Path(args.unseen).read_text().splitlines())]
    held, texts = [p for p, _ in pairs[:args.max_prompts]], [t for _, t in pairs[:args.max_prompts]]
    policies = {"base": project.base_model}
    # Each round's SFT model and the policy its path trained from it (PPO, RLOO or DPO), by round number.
    for stage in ("sft", *RL_STAGES):
        for i, version in enumerate(ModelVersion.objects.filter(project=project, stage=stage).order_by("id"), 1):
            policies[f"r{version.round.number if version.round else i}_{stage}"] = version
    # Round k's policy: what its gate kept active, i.e. the model its generate job sampled the next round from.
    for round_ in Round.objects.filter(project=project).order_by("number"):
        job = TrainingJob.objects.filter(round=round_, stage="generate").order_by("-id").first()
        if job is not None and job.input_models.exists():
            policies[f"policy_r{round_.number}"] = job.input_models.order_by("id").first()
    results: dict = {"prompts": len(held), "samples_per_prompt": args.samples, "score": args.score, "policies": {},
                     "paired": {}}
    scores: dict[str, list[float]] = {}
    done: dict[int, str] = {}
    if args.policies:  # only these (e.g. to skip models an earlier evaluation with the same seeds measured)
        policies = {name: v for name, v in policies.items() if name in args.policies.split(",")}
    for name, version in policies.items():
        if version.pk in done:  # the same model under another name: same samples (same seeds)
            scores[name] = scores[done[version.pk]]
            results["policies"][name] = {**results["policies"][done[version.pk]], "same_as": done[version.pk]}
            continue
        done[version.pk] = name
        path = version.artifact_path
        started = time.perf_counter()
        tokenizer, model = load_tokenizer(path), load_causal_lm(path, "cpu")
        config = GenerateConfig(model=path, k=args.samples, max_new_tokens=project.max_new_tokens, temperature=1.0,
                                top_p=1.0, chat_template=project.chat_template, batch_size=16, seed=args.seed,
                                resume=False, device="cpu")
        groups = generate(model, tokenizer, held, config)
        candidates = [c for group in groups for c in group]
        # One number per prompt: the mean over its samples (so the standard errors are over prompts).
        scores[name] = [sum(float(score(t, c["text"])) for c in group) / len(group)
                        for t, group in zip(texts, groups, strict=True)]
        mean, stderr = mean_stderr(scores[name])
        results["policies"][name] = {
            "model_version": version.pk, "score": round(mean, 4), "score_stderr": round(stderr, 4),
            "length": round(sum(c["tokens"] for c in candidates) / len(candidates), 1),
            "eos_rate": round(sum(c["finish_reason"] == "eos" for c in candidates) / len(candidates), 3),
            "ended_rate": round(sum(c["finish_reason"] in ("eos", "stop") for c in candidates) / len(candidates), 3),
            "seconds": round(time.perf_counter() - started, 1), "example": candidates[0]["text"][:300],
            "per_prompt": [round(x, 4) for x in scores[name]]}
        print(name, json.dumps({k: v for k, v in results["policies"][name].items() if k != "per_prompt"}), flush=True)
    steps = [("policy_r1", "base"), ("policy_r2", "policy_r1"), ("policy_r2", "base")]
    steps += [(f"r{i}_{rl}", f"r{i}_sft") for rl in RL_STAGES for i in (1, 2)]  # the RL step's own gain
    steps += [("r1_sft", "base"), ("r2_sft", "policy_r1")] + [(f"r2_{rl}", "policy_r1") for rl in RL_STAGES]
    for a, b in steps:
        if a in scores and b in scores:
            results["paired"][f"{a} - {b}"] = {k: round(v, 4) for k, v in paired(scores[a], scores[b]).items()}
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results["paired"], indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prompts")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=400)
    p.add_argument("--unseen-out", type=Path, help="also write the next --unseen prompts here (never imported)")
    p.add_argument("--unseen", type=int, default=100)
    d = sub.add_parser("drive")
    e = sub.add_parser("evaluate")
    for s in (d, e):
        s.add_argument("--project", required=True)
        s.add_argument("--out", required=True)
    d.add_argument("--url", required=True)
    d.add_argument("--preset", default="cpu")
    d.add_argument("--config", default="", help="JSON per-stage overrides for both rounds")
    d.add_argument("--oracle", default="annotation.oracles:prefer_concise_complete")
    d.add_argument("--demonstrator", default="annotation.oracles:polite_demonstrator")
    d.add_argument("--labelers", type=int, default=4)
    d.add_argument("--first-prompts", type=int, default=100, help="round 0: train prompts given candidates")
    d.add_argument("--resume", action="store_true",
                   help="continue a stopped drive: finish its open round, then run the rounds still missing")
    e.add_argument("--score", default="annotation.oracles:concise_complete_score")
    e.add_argument("--max-prompts", type=int, default=200)
    e.add_argument("--unseen", default="", help="JSONL of prompts the project never imported, evaluated too")
    e.add_argument("--seed", type=int, default=1234)
    e.add_argument("--policies", default="", help="comma-separated names to evaluate (default: all)")
    e.add_argument("--samples", type=int, default=8, help="samples per prompt (same seeds for every policy)")
    args = parser.parse_args()
    {"prompts": prompts, "drive": drive, "evaluate": evaluate}[args.command](args)


if __name__ == "__main__":
    main()
