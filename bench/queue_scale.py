#!/usr/bin/env python3
"""Queue scale benchmark (issue 13): does a labeling cycle cost the same with 3k, 30k or 300k open tasks?

One command, self-contained, loopback only, stops by itself. On an idle machine (the seeding of 2 × 300k
tasks through the import path dominates; see the summary's ``seeding``):

    .venv/bin/python bench/queue_scale.py --labelers 16 --json-out bench/results/queue_scale.json

A quick smoke test: ``--labelers 2 --sizes 3000 --other-tasks 3000 --warmup 2 --duration 5 --repeats 1``.

For each engine (``--engines``: SQLite as ``scripts/run.sh`` configures it, i.e. the settings' default file
``$VAR_DIR/db.sqlite3``; and PostgreSQL, a throwaway durable cluster started with ``pg_stat_statements``):

1. migrates a fresh database; seeds **another project** with ``--other-tasks`` open ranking tasks (default
   300,000), then the measured project (k=4, overlap 1, lease 900 s) with the first size and
   ``--labelers`` + 1 labeler accounts (the last one only probes the claim). Both through the import path,
   ``annotation.services.bulk_create_prompts`` (``harness.seed`` / ``harness.seed_more``), timed: the summary's
   ``seeding`` gives seconds and tasks/s for every step;
2. for each size in ``--sizes`` (default 3000, 30000, 300000), in increasing order, ``--repeats`` times
   (default 3): tops the project up to exactly that many open tasks (what the previous runs labeled is
   replaced), ``VACUUM ANALYZE`` on PostgreSQL, then ``--labelers`` labelers over HTTP against gunicorn as in
   production (one per size) for ``--warmup`` + ``--duration`` seconds, next-task → submit-ranking. The
   windows are short (default 1 + 4 s) so that even the smallest queue stays near its size: at 400 cycles/s
   a run labels about 2000 tasks; the open count at the window's start and end is reported. The integrity
   checks of a run cover every run so far on the engine (the project keeps what they labeled);
3. the claim statement's own time at each size:
   - PostgreSQL: ``pg_stat_statements`` over each measured window (reset when it opens): calls and mean
     execution time of the claim (``WITH pick AS MATERIALIZED …``) and of the labeler lock, plus the
     statements with the most total time; after the load, in-process (a child process in Django,
     ``_claim_timing``): the wall time of ``annotation.queue.claim`` for the probe labeler, ``--claim-samples``
     times, each in a rolled-back transaction, and one ``EXPLAIN (ANALYZE, BUFFERS)`` of it (execution
     time, and whether it reads the ``slot_queue`` index);
   - SQLite: the same in-process timing (there is no server-side statistic), and ``EXPLAIN QUERY PLAN``;
4. prints a JSON summary (``--json-out FILE`` writes it too): per engine and size, median cycles/s, p50/p99
   per call, claim times; the ratio cycles/s at the largest size / at the smallest (target: within 20 %).

Everything it started is stopped, and the temporary directory removed, on success, on error and on Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from harness import (  # bench/harness.py, beside this file
    CycleBudget,
    Gunicorn,
    Labeler,
    Postgres,
    SqliteDB,
    _django_setup,
    free_port,
    integrity_checks,
    pct,
    run_child,
    seed,
    seed_more,
    stop_on_signals,
    tear_down,
)
from labeling_cycle import git_state, log, median_of, wait_for_quiet
from labeling_vs_label_studio import drive

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKERS = (os.cpu_count() or 1) * 2  # platform/gunicorn.conf.py's defaults
DEFAULT_THREADS = 4
CLAIM_MARK = "WITH pick AS MATERIALIZED"  # annotation.queue._claim_sql on PostgreSQL
LOCK_MARK = "FOR NO KEY UPDATE"  # annotation.queue.lock_labeler on PostgreSQL

# --------------------------------------------------------------------------------------------------
# Inside Django (this file, run in a child process): the claim timed in-process.
# --------------------------------------------------------------------------------------------------


def claim_timing_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="queue_scale.py _claim_timing")
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--user", type=int, required=True)
    p.add_argument("--samples", type=int, default=200)
    args = p.parse_args(argv)
    _django_setup()

    from datetime import timedelta

    from django.db import connection, transaction
    from django.utils import timezone

    from annotation import queue

    def params(now):
        ops = connection.ops
        return {"user": args.user, "project": args.project, "kind": "ranking",
                "now": ops.adapt_datetimefield_value(now),
                "expires": ops.adapt_datetimefield_value(now + timedelta(seconds=900))}

    ms, warm = [], 5  # the first claims prepare the statement on PostgreSQL (PREPARE_AFTER) and warm caches
    task = None
    for i in range(args.samples + warm):
        with transaction.atomic():
            queue.lock_labeler(user_id=args.user, project_id=args.project)
            now = timezone.now()
            t0 = time.perf_counter()
            task = queue.claim(user_id=args.user, project_id=args.project, kind="ranking", now=now,
                               expires=now + timedelta(seconds=900))
            elapsed = time.perf_counter() - t0
            transaction.set_rollback(True)  # nothing leased: every sample claims from the same queue
        if i >= warm:
            ms.append(elapsed * 1000)
    if not isinstance(task, queue.TaskRow):
        raise SystemExit(f"the probe labeler got no task from the claim: {task!r}")
    ms.sort()
    out = {"calls": len(ms), "p50_ms": round(pct(ms, 50), 3), "p90_ms": round(pct(ms, 90), 3),
           "p99_ms": round(pct(ms, 99), 3), "mean_ms": round(statistics.fmean(ms), 3)}
    sql = queue._claim_sql(connection.vendor, False)
    with transaction.atomic():
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params(timezone.now()))
                plan = cursor.fetchone()[0]
                plan = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
                out["explain_analyze"] = {"execution_ms": plan.get("Execution Time"),
                                          "planning_ms": plan.get("Planning Time"),
                                          "reads_slot_queue_index": "slot_queue" in json.dumps(plan)}
            else:
                cursor.execute("EXPLAIN QUERY PLAN " + sql, params(timezone.now()))
                rows = [str(r[-1]) for r in cursor.fetchall()]
                out["query_plan"] = rows
                out["reads_slot_queue_index"] = any("slot_queue" in r for r in rows)
        transaction.set_rollback(True)
    print(json.dumps(out))


# --------------------------------------------------------------------------------------------------
# The benchmark.
# --------------------------------------------------------------------------------------------------


class Engine:
    """One engine's database, seeded step by step, and what was timed on it."""

    def __init__(self, name: str, tmp: Path, pg: Postgres | None, base_env: dict):
        self.name, self.tmp, self.pg = name, tmp, pg
        self.env = {**base_env, "VAR_DIR": str(tmp / f"scale-{name}")}
        if name == "postgresql":
            self.env["DATABASE_URL"] = pg.create_database("scale")
        self.seeding: list[dict] = []
        self.numbered = 0  # tasks of the measured project seeded so far (their prompt texts must differ)

    def db(self):
        return SqliteDB(Path(self.env["VAR_DIR"]) / "db.sqlite3") if self.name == "sqlite" else self.pg.connect("scale")

    def open_tasks(self, project: int) -> int:
        with self.db() as db:
            return db.execute("SELECT count(*) FROM annotation_task WHERE project_id = %s AND status = 'open'",
                              (project,)).fetchone()[0]

    def timed_seed(self, what: str, fn, tasks: int) -> dict:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        step = {"what": what, "tasks": tasks, "seconds": round(seconds, 1),
                "bulk_create_prompts_seconds": out.get("seed_seconds"),
                "tasks_per_s": round(tasks / max(out.get("seed_seconds") or seconds, 1e-9), 1)}
        self.seeding.append(step)
        log(f"{self.name}: {what}: {tasks} tasks in {step['seconds']} s ({step['tasks_per_s']} tasks/s)")
        return out

    def analyze(self) -> None:
        if self.name == "postgresql":
            with self.pg.connect("scale") as db:
                db.execute("VACUUM ANALYZE")
                db.execute("CHECKPOINT")


def pg_statements(pg: Postgres) -> dict:
    with pg.connect("scale") as db:
        rows = db.execute("""
            SELECT query, calls, mean_exec_time, stddev_exec_time, total_exec_time, rows FROM pg_stat_statements
            WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND calls > 0
            ORDER BY total_exec_time DESC""").fetchall()

    def pick(mark: str) -> dict | None:
        hits = [r for r in rows if mark in r[0]]
        if not hits:
            return None
        calls = sum(r[1] for r in hits)
        total = sum(r[4] for r in hits)
        return {"calls": calls, "mean_exec_ms": round(total / calls, 3),
                "stddev_exec_ms": round(max(r[3] for r in hits), 3), "statements": len(hits)}

    return {
        "claim": pick(CLAIM_MARK),
        "lock_labeler": pick(LOCK_MARK),
        "top_by_total_time": [{"query": " ".join(r[0].split())[:160], "calls": r[1], "mean_exec_ms": round(r[2], 3),
                               "total_ms": round(r[4], 1)} for r in rows[:10]],
    }


def run_engine(args, engine: Engine, stop: threading.Event) -> dict:
    a = args
    log(f"{engine.name}: migrating")
    t0 = time.perf_counter()
    run_child(engine.env, "manage.py", "migrate", "--noinput", "-v0", capture=False)
    if engine.name == "postgresql":
        with engine.pg.connect("scale") as db:
            db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    log(f"{engine.name}: migrated in {time.perf_counter() - t0:.0f} s")
    other = None
    if a.other_tasks:
        other = engine.timed_seed("other project", lambda: seed(engine.env, "other", a.other_tasks, 1, 1),
                                  a.other_tasks)
    first = a.sizes[0]
    main = engine.timed_seed(f"measured project, first {first}",
                             lambda: seed(engine.env, "main", first, a.labelers + 1, 1), first)
    engine.numbered = first
    project = main["project"]
    tokens, users = main["tokens"][:-1], main["users"][:-1]
    probe_user = main["users"][-1]
    sizes = []
    engine_labelers: list[Labeler] = []
    for size in a.sizes:
        runs = []
        gun: Gunicorn | None = None
        try:
            for rep in range(1, a.repeats + 1):
                missing = size - engine.open_tasks(project)
                if missing > 0:
                    engine.timed_seed(f"top up to {size}", lambda m=missing: seed_more(
                        engine.env, project, "main", engine.numbered, m), missing)
                    engine.numbered += missing
                engine.analyze()
                if gun is None:
                    gun = Gunicorn(engine.tmp, free_port(), engine.env, a.workers, a.threads, "rlhf_platform.wsgi",
                                   database=engine.name)
                    gun.start()
                if a.quiet_wait > 0:
                    log(f"other processes use {wait_for_quiet(a.quiet_wait)} cores just before the run")
                open_before = engine.open_tasks(project)
                deadline_box = [float("inf")]
                labelers = [Labeler(i, tok, gun.port, project, stop, deadline_box, CycleBudget(None))
                            for i, tok in enumerate(tokens)]

                def reset_stats():
                    if engine.name == "postgresql":
                        with engine.pg.connect("scale") as db:
                            db.execute("SELECT pg_stat_statements_reset()")

                roots = {"server": gun.proc.pid}
                if engine.name == "postgresql":
                    roots["postgres"] = engine.pg.postmaster_pid()
                load = drive(labelers, deadline_box, a.warmup, a.duration, stop, roots, {200, 201, 204},
                             on_measure_start=reset_stats)
                stats = pg_statements(engine.pg) if engine.name == "postgresql" else None
                # Checked against every run so far: the project keeps what earlier runs labeled.
                engine_labelers.extend(labelers)
                with engine.db() as db:
                    checks = integrity_checks(db, project, engine_labelers, dict(zip(tokens, users, strict=True)))
                run = {"repeat": rep, "open_tasks_at_start": open_before,
                       "open_tasks_at_end": engine.open_tasks(project), "load": load, "pg_stat_statements": stats,
                       "integrity": checks}
                runs.append(run)
                claim = (stats or {}).get("claim") or {}
                log(f"{engine.name} {size}: {load['cycles_per_s']} cycles/s, next p50/p99 {load['next_task']['p50_ms']}"
                    f"/{load['next_task']['p99_ms']} ms, submit p50/p99 {load['submit']['p50_ms']}/"
                    f"{load['submit']['p99_ms']} ms, errors {load['error_count_whole_run']}"
                    + (f", claim {claim.get('mean_exec_ms')} ms in PostgreSQL" if claim else "")
                    + f"; open tasks {run['open_tasks_at_start']} → {run['open_tasks_at_end']}"
                    + f"; integrity {'OK' if checks['ok'] else 'FAILED ' + json.dumps(checks)}")
                if load["queue_drained"]:
                    log("WARNING: the queue ran out during the run; shorten --warmup/--duration")
                if stop.is_set():
                    raise KeyboardInterrupt
        finally:
            if gun is not None:
                gun.stop()
        missing = size - engine.open_tasks(project)  # the runs may have labeled most of a small queue
        if missing > 0:
            engine.timed_seed(f"top up to {size} for the claim's timing", lambda m=missing: seed_more(
                engine.env, project, "main", engine.numbered, m), missing)
            engine.numbered += missing
            engine.analyze()
        in_process = json.loads(run_child(engine.env, __file__, "_claim_timing", "--project", str(project),
                                          "--user", str(probe_user), "--samples", str(a.claim_samples))
                                .strip().splitlines()[-1])
        log(f"{engine.name} {size}: claim in-process p50 {in_process['p50_ms']} ms, p99 {in_process['p99_ms']} ms"
            + (f", EXPLAIN ANALYZE {in_process['explain_analyze']['execution_ms']} ms"
               if "explain_analyze" in in_process else ""))
        loads = [r["load"] for r in runs]
        claims = [r["pg_stat_statements"]["claim"]["mean_exec_ms"] for r in runs
                  if r["pg_stat_statements"] and r["pg_stat_statements"]["claim"]]
        sizes.append({
            "open_tasks_in_project": size,
            "open_tasks_in_other_project": a.other_tasks,
            "median": {
                "cycles_per_s": median_of(loads, "cycles_per_s"),
                **{f"{call}_{q}": median_of(loads, call, q)
                   for call in ("next_task", "submit") for q in ("p50_ms", "p99_ms")},
                "cpu_ms_per_cycle": median_of(loads, "cpu_ms_per_cycle"),
                "claim_mean_exec_ms_pg_stat_statements": round(statistics.median(claims), 3) if claims else None,
            },
            "cycles_per_s_each_run": [m["cycles_per_s"] for m in loads],
            "errors_all_runs": sum(m["error_count_whole_run"] for m in loads),
            "integrity_ok_all_runs": all(r["integrity"]["ok"] for r in runs),
            "claim_in_process": in_process,
            "runs": runs,
        })
    smallest, largest = sizes[0]["median"]["cycles_per_s"], sizes[-1]["median"]["cycles_per_s"]
    ratio = round(largest / smallest, 3) if smallest else None
    return {
        "sizes": sizes,
        f"cycles_ratio_{a.sizes[-1]}_to_{a.sizes[0]}": ratio,
        "within_20_percent": None if ratio is None or len(sizes) < 2 else ratio >= 0.8,
        "seeding": engine.seeding,
        "other_project_seeded": other is not None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labelers", type=int, default=16, help="concurrent labelers (default 16)")
    p.add_argument("--sizes", default="3000,30000,300000",
                   help="open tasks in the measured project, increasing (default 3000,30000,300000)")
    p.add_argument("--other-tasks", type=int, default=300000,
                   help="open tasks in another project of the same database (default 300000)")
    p.add_argument("--engines", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    p.add_argument("--warmup", type=float, default=1, help="unmeasured seconds per run (default 1)")
    p.add_argument("--duration", type=float, default=4, help="measured seconds per run (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="runs per size, topped up before each (default 3)")
    p.add_argument("--claim-samples", type=int, default=200, help="in-process claims timed per size (default 200)")
    p.add_argument("--workers", type=int, default=int(os.environ.get("GUNICORN_WORKERS", DEFAULT_WORKERS)))
    p.add_argument("--threads", type=int, default=int(os.environ.get("GUNICORN_THREADS", DEFAULT_THREADS)))
    p.add_argument("--quiet-wait", type=float, default=0, metavar="SECONDS",
                   help="before each run, wait up to this long for other processes to leave the CPUs idle")
    p.add_argument("--fast-pg", action="store_true", help="PostgreSQL with fsync=off (default: durable settings)")
    p.add_argument("--json-out", type=Path, help="also write the JSON summary here")
    p.add_argument("--keep-logs", type=Path, help="copy the gunicorn and PostgreSQL logs into this directory")
    args = p.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.engines = [e for e in args.engines.split(",") if e]
    if args.sizes != sorted(args.sizes) or min(args.sizes) < 1:
        p.error("--sizes must be positive and increasing")
    if not set(args.engines) <= {"sqlite", "postgresql"}:
        p.error("--engines from sqlite, postgresql")
    if min(args.labelers, args.repeats, args.claim_samples) < 1 or args.other_tasks < 0:
        p.error("--labelers, --repeats and --claim-samples must be positive")

    tmp = Path(tempfile.mkdtemp(prefix="rlhf-scale-"))
    pg = None
    if "postgresql" in args.engines:
        pg = Postgres(tmp, free_port(), fast=args.fast_pg, extra_options=[
            "shared_preload_libraries=pg_stat_statements", "pg_stat_statements.max=1000",
            "pg_stat_statements.track=top"])
    stop = threading.Event()
    base_env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "rlhf_platform.settings", "SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "DEBUG": "false", "ALLOWED_HOSTS": "127.0.0.1,localhost", "LOG_LEVEL": "WARNING",
    }
    for var in ("GUNICORN_ACCESSLOG", "DATABASE_URL", "VAR_DIR"):
        base_env.pop(var, None)

    stop_on_signals()
    started = time.perf_counter()
    try:
        if pg is not None:
            log(f"starting PostgreSQL {pg.bin.parent.name} (pg_stat_statements) on 127.0.0.1:{pg.port} in {tmp}")
            pg.start()
        engines = {}
        for name in args.engines:
            engines[name] = run_engine(args, Engine(name, tmp, pg, base_env), stop)
        summary = {
            "benchmark": "queue_scale",
            "command": " ".join([".venv/bin/python", "bench/queue_scale.py", *sys.argv[1:]]),
            "config": {"labelers": args.labelers, "sizes": args.sizes, "other_tasks": args.other_tasks, "k": 4,
                       "overlap": 1, "warmup_s": args.warmup, "duration_s": args.duration, "repeats": args.repeats,
                       "claim_samples": args.claim_samples, "gunicorn_workers": args.workers,
                       "gunicorn_threads": args.threads, "postgres_durable": not args.fast_pg,
                       "cpus": os.cpu_count(), "python": sys.version.split()[0], **git_state()},
            "engines": engines,
            "wall_seconds": round(time.perf_counter() - started),
        }
        text = json.dumps(summary, indent=2)
        print(text)
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(text + "\n")
        return 0 if all(size["integrity_ok_all_runs"] for e in engines.values() for size in e["sizes"]) else 1
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        stop.set()
        return 130
    finally:
        tear_down(stop, tmp, args.keep_logs, [tmp / "gunicorn.log"], [], pg)
        log("stopped gunicorn and PostgreSQL; removed " + str(tmp))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_claim_timing":
        claim_timing_main(sys.argv[2:])
    else:
        sys.exit(main())
