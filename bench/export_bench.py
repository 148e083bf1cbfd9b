#!/usr/bin/env python3
"""Export benchmark (issue 11): export a million k=4 rankings in constant memory.

One command, self-contained:

    .venv/bin/python bench/export_bench.py --rankings 1000000 --repeats 3

What it does:

1. migrates a throwaway SQLite database in a temporary directory (or ``--db PATH``, kept, and seeded only
   if it is new) and fills it with raw SQL inserts: one project (k=4, overlap 4), ``--rankings / 4`` ranking
   tasks with their prompts, candidates and slots, and 4 labelers who each rank every task, so ``--rankings``
   rankings and 4 entries each. Ranks are a seeded shuffle of 1, 2, 3, 4; every tenth ranking has a tie
   (1, 2, 2, 3). Prompts are about 100 characters, responses about 160;
2. runs ``manage.py export_data`` (the real command: label count, row generator, writer) for each export
   in ``--exports``, ``--repeats`` times, each in a fresh process, so its peak RSS (``ru_maxrss``) is that
   export's alone; the output is deleted after each run;
3. prints one line per run and a JSON summary with the median of the repeats: seconds (wall clock, and the
   process's CPU time), rankings read per second, rows written per second, peak RSS (``ru_maxrss``), the
   peak of its anonymous part (``RssAnon`` in /proc/self/status, sampled every 20 ms: memory the process
   allocated, without the file pages it maps) and the RSS once Django and the command's modules are
   imported (before any export), and the output size. ``--json-out FILE`` writes it too.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "Export benchmark"
K, OVERLAP = 4, 4
EXPORTS = ("trl-pairwise:jsonl", "listwise:jsonl", "trl-pairwise:parquet", "listwise:parquet",
           "trl-pairwise:jsonl:consensus", "listwise:datasets")
WHEN = "2025-01-01 00:00:00"
FILLER = ("Here is a careful answer that walks through the question step by step, with an example and a short "
          "summary at the end.")


def django_setup(db: Path) -> None:
    os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlhf_platform.settings")
    sys.path[:0] = [str(ROOT), str(ROOT / "platform")]
    import django

    django.setup()


# --------------------------------------------------------------------------------------------------
# Subcommands that run inside Django (executed by this same file in a child process).
# --------------------------------------------------------------------------------------------------

def seed(db: Path, rankings: int) -> None:
    """Migrate and fill the database with raw inserts (ids given, so foreign keys need no lookups)."""
    django_setup(db)
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from annotation.models import Project, split_for_hash

    call_command("migrate", verbosity=0)
    project = Project.objects.create(name=PROJECT, k=K, overlap=OVERLAP)
    labelers = [get_user_model().objects.create_user(f"labeler{i}", password=None).pk for i in range(OVERLAP)]
    tasks = rankings // OVERLAP
    connection.ensure_connection()
    raw = connection.connection
    raw.execute("PRAGMA synchronous=OFF")
    raw.execute("BEGIN")

    def insert(table: str, columns: str, rows) -> None:
        marks = ", ".join("?" * len(columns.split(",")))
        raw.executemany(f'INSERT INTO "{table}" ({columns}) VALUES ({marks})', rows)

    def prompts():
        for t in range(1, tasks + 1):
            text = f"Question {t}: how would you explain topic {t % 977} to someone new to it, in a few sentences?"
            digest = hashlib.sha256(text.encode()).hexdigest()
            yield t, text, "imported", "en", "[]", split_for_hash(digest), digest, WHEN, project.pk

    insert("annotation_prompt", "id, text, source, language, tags, split, content_hash, created, project_id",
           prompts())
    insert("annotation_candidate", "id, text, origin, generation_params, created, prompt_id",
           ((c, f"Answer {c % K} to question {(c - 1) // K + 1}. {FILLER}", "imported", "{}", WHEN, (c - 1) // K + 1)
            for c in range(1, tasks * K + 1)))
    insert("annotation_task", "id, kind, target_overlap, done_count, status, created, project_id, prompt_id, is_gold",
           ((t, "ranking", OVERLAP, OVERLAP, "complete", WHEN, project.pk, t, False) for t in range(1, tasks + 1)))
    insert("annotation_taskcandidate", "id, position, candidate_id, task_id",
           ((c, (c - 1) % K, c, (c - 1) // K + 1) for c in range(1, tasks * K + 1)))
    insert("annotation_taskslot", '"id", "kind", "index", "status", "labeler_id", "project_id", "task_id", '
                                  '"task_done_count", "task_open", "task_is_gold"',
           ((r, "ranking", (r - 1) % OVERLAP, "done", labelers[(r - 1) % OVERLAP], project.pk, (r - 1) // OVERLAP + 1,
             OVERLAP, False, False) for r in range(1, tasks * OVERLAP + 1)))
    insert("annotation_ranking", "id, comment, seconds_spent, review_status, created, updated, labeler_id, task_id, "
                                 "slot_id, in_snapshot, revision, review_note, shown_order",
           ((r, "", 12.5, "submitted", WHEN, WHEN, labelers[(r - 1) % OVERLAP], (r - 1) // OVERLAP + 1, r, False, 1, "",
             "[0, 1, 2, 3]") for r in range(1, tasks * OVERLAP + 1)))
    shuffler = random.Random(11)

    def entries():
        for r in range(1, tasks * OVERLAP + 1):
            ranks = [1, 2, 2, 3] if r % 10 == 0 else [1, 2, 3, 4]
            shuffler.shuffle(ranks)
            first = ((r - 1) // OVERLAP) * K + 1
            for i in range(K):
                yield (r - 1) * K + i + 1, ranks[i], False, False, False, False, first + i, r

    insert("annotation_rankingentry", "id, rank, fails_instruction, hallucination, inappropriate, harmful, "
                                      "candidate_id, ranking_id", entries())
    raw.execute("COMMIT")
    raw.execute("ANALYZE")


def anonymous_rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("RssAnon:"))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def export(db: Path, fmt: str, file_type: str, out: Path, extra: list[str]) -> None:
    """One export through the real command; prints a JSON line with its numbers."""
    django_setup(db)
    import io

    from django.core.management import call_command

    from annotation.management.commands import export_data  # noqa: F401  (its imports count in the baseline)

    peak_anonymous = [anonymous_rss_mb()]

    def sample() -> None:
        while True:
            peak_anonymous[0] = max(peak_anonymous[0], anonymous_rss_mb())
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stdout = io.StringIO()
    start, cpu = time.perf_counter(), cpu_seconds()
    call_command("export_data", "--project", PROJECT, "--format", fmt, "--file-type", file_type, "--out", str(out),
                 *extra, verbosity=0, stdout=stdout)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    rows = int(stdout.getvalue().split()[1])  # "wrote N <format> rows to <out>"
    size = sum(p.stat().st_size for p in out.rglob("*")) if out.is_dir() else out.stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "rows": rows, "bytes": size, "baseline_rss_mb": baseline,
                      "peak_rss_mb": peak, "peak_anonymous_rss_mb": max(peak_anonymous[0], anonymous_rss_mb())}))


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------

def child(*args: str) -> str:
    result = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args[:1])} failed:\n{result.stderr[-4000:]}")
    return result.stdout


def run(args: argparse.Namespace, work: Path) -> dict:
    db = args.db or work / "bench.sqlite3"
    seed_seconds = None
    if not db.exists():
        start = time.perf_counter()
        child("_seed", str(db), str(args.rankings))
        seed_seconds = time.perf_counter() - start
        print(f"seeded {args.rankings} rankings in {seed_seconds:.0f} s ({db.stat().st_size / 2**20:.0f} MiB)",
              flush=True)
    results = {}
    for spec in args.exports:
        fmt, file_type, *extra = spec.split(":")
        extra_args = ["--aggregate", extra[0]] if extra else []
        runs = []
        for repeat in range(args.repeats):
            out = work / f"out-{repeat}.{'jsonl' if file_type == 'jsonl' else file_type}"
            line = child("_export", str(db), fmt, file_type, str(out), *extra_args).strip().splitlines()[-1]
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink(missing_ok=True)
            numbers = json.loads(line)
            numbers["rankings_per_s"] = args.rankings / numbers["seconds"]
            numbers["rows_per_s"] = numbers["rows"] / numbers["seconds"]
            runs.append(numbers)
            print(f"{spec} #{repeat + 1}: {numbers['seconds']:.1f} s ({numbers['cpu_seconds']:.1f} s CPU), "
                  f"{numbers['rankings_per_s']:,.0f} rankings/s, {numbers['rows']:,} rows at "
                  f"{numbers['rows_per_s']:,.0f} rows/s, peak RSS {numbers['peak_rss_mb']:.0f} MB (anonymous "
                  f"{numbers['peak_anonymous_rss_mb']:.0f} MB; after imports {numbers['baseline_rss_mb']:.0f} MB), "
                  f"{numbers['bytes'] / 2**20:,.0f} MiB", flush=True)
        results[spec] = {"median": {key: statistics.median(r[key] for r in runs) for key in runs[0]}, "runs": runs}
    return {"rankings": args.rankings, "k": K, "overlap": OVERLAP, "repeats": args.repeats,
            "seed_seconds": seed_seconds, "exports": results}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_seed":
        return seed(Path(sys.argv[2]), int(sys.argv[3]))
    if len(sys.argv) > 1 and sys.argv[1] == "_export":
        return export(Path(sys.argv[2]), sys.argv[3], sys.argv[4], Path(sys.argv[5]), sys.argv[6:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rankings", type=int, default=1_000_000, help="rankings to create (a multiple of 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--exports", nargs="+", default=list(EXPORTS),
                        help="format:file-type[:aggregate], e.g. trl-pairwise:jsonl:consensus")
    parser.add_argument("--db", type=Path, help="keep the seeded database here (reused when it exists)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.rankings % OVERLAP:
        parser.error(f"--rankings must be a multiple of {OVERLAP}")
    work = Path(tempfile.mkdtemp(prefix="export-bench-"))
    try:
        summary = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
