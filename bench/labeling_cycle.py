#!/usr/bin/env python3
"""Labeling-cycle benchmark (issue 2): N concurrent labelers against gunicorn + PostgreSQL.

One command, self-contained, loopback only, stops by itself:

    .venv/bin/python bench/labeling_cycle.py --labelers 16 --tasks 3000 --duration 30

What it does:

1. starts a throwaway PostgreSQL cluster in a temporary directory on 127.0.0.1 (as the ``postgres``
   user when run as root), with PostgreSQL's default (durable) settings unless ``--fast-pg``;
2. per run: creates a fresh database, runs ``manage.py migrate``, seeds one project (k=4, ``--overlap``,
   lease 900 s, ranking only) with ``--tasks`` ranking tasks made by
   ``annotation.services.bulk_create_prompts`` and ``--labelers`` labeler accounts with API tokens;
3. starts gunicorn exactly as production does (``platform/gunicorn.conf.py``, ``rlhf_platform.wsgi``) on a
   free loopback port and waits for ``/healthz``;
4. runs ``--labelers`` threads, each with one keep-alive HTTP connection, repeating
   ``POST /api/projects/{id}/next-task/`` → ``POST /api/tasks/{id}/submit-ranking/`` for ``--warmup``
   unmeasured seconds and then ``--duration`` measured seconds, or until ``--max-cycles`` cycles or the
   queue is empty (204);
5. checks the database for over-assignment and lost submissions;
6. after the last run, counts the SQL statements each call sends (PostgreSQL ``log_statement=all`` for
   one labeler over HTTP, and Django's ``CaptureQueriesContext`` in-process) and prints a JSON summary
   (``--json-out FILE`` writes it too). Exit status 1 when an integrity check failed.

``--runs R`` repeats steps 2–5 R times (fresh database and gunicorn each time, so runs are independent
samples on a noisy machine) and reports the median of each number. Everything it started is stopped,
and the temporary directory removed, on success, on error and on Ctrl-C.

Environment: GUNICORN_WORKERS / GUNICORN_THREADS are passed to gunicorn (``--workers`` / ``--threads``
override them); the default is gunicorn.conf.py's own: 2 workers per core, 4 threads each.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

from harness import (  # bench/harness.py, beside this file (shared with the load and fault tests)
    CycleBudget,
    Gunicorn,
    Labeler,
    Postgres,
    _django_setup,
    free_port,
    integrity_checks,
    latency_summary,
    pct,
    proc_table,
    run_child,
    seed,
    status_counts,
    stop_on_signals,
    tear_down,
)

ROOT = Path(__file__).resolve().parent.parent
# The defaults of platform/gunicorn.conf.py (2 workers per core, 4 threads each): a sweep on the 2-core
# benchmark machine found nothing better (docs/benchmarks.md).
DEFAULT_WORKERS = (os.cpu_count() or 1) * 2
DEFAULT_THREADS = 4

# --------------------------------------------------------------------------------------------------
# A subcommand that runs inside Django (executed by this same file in a child process).
# --------------------------------------------------------------------------------------------------


def queries_main(argv: list[str]) -> None:
    """In-process: the ORM queries of one next-task and one submit-ranking (CaptureQueriesContext)."""
    p = argparse.ArgumentParser(prog="labeling_cycle.py _queries")
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--cycles", type=int, default=3)
    args = p.parse_args(argv)
    _django_setup()

    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    client = APIClient(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Token {args.token}")
    out = {"next_task": [], "submit_ranking": []}
    sql = {}
    for cycle in range(args.cycles + 1):  # the first cycle warms caches (content types, etc.) and is dropped
        with CaptureQueriesContext(connection) as ctx:
            r = client.post(f"/api/projects/{args.project}/next-task/", {"kind": "ranking"}, format="json")
        assert r.status_code == 200, (r.status_code, getattr(r, "data", None))
        task = r.json()
        if cycle:
            out["next_task"].append(len(ctx.captured_queries))
            sql["next_task"] = [q["sql"] for q in ctx.captured_queries]
        entries = [{"candidate": c["id"], "rank": i + 1} for i, c in enumerate(task["candidates"])]
        with CaptureQueriesContext(connection) as ctx:
            r = client.post(f"/api/tasks/{task['id']}/submit-ranking/",
                            {"entries": entries, "seconds_spent": 1.0}, format="json")
        assert r.status_code == 201, (r.status_code, getattr(r, "data", None))
        if cycle:
            out["submit_ranking"].append(len(ctx.captured_queries))
            sql["submit_ranking"] = [q["sql"] for q in ctx.captured_queries]
    print(json.dumps({"counts": out, "sql": sql}))


# --------------------------------------------------------------------------------------------------
# Logging and CPU accounting (the processes themselves are in harness.py).
# --------------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)



def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (user+nice+system+irq+softirq+steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (at most ``max_wait`` s) until the rest of the machine uses under ``threshold`` cores."""
    started = time.monotonic()
    while True:
        busy0 = machine_busy_seconds()
        time.sleep(3)
        load = (machine_busy_seconds() - busy0) / 3
        if load < threshold or time.monotonic() - started >= max_wait:
            return round(load, 2)


def cpu_seconds(roots: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds used so far by each named process tree (live processes only)."""
    table = proc_table()
    children = defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, root in roots.items():
        total, stack = 0, [root] if root else []
        while stack:
            pid = stack.pop()
            total += table.get(pid, (0, 0))[1]
            stack.extend(children.get(pid, []))
        out[name] = total / ticks
    return out


# --------------------------------------------------------------------------------------------------
# Query counts per request, as PostgreSQL sees them.
# --------------------------------------------------------------------------------------------------


def pg_statements_per_call(pg: Postgres, port: int, project: int, token: str, cycles: int) -> dict:
    """Turn on log_statement=all, run a few cycles as one labeler, count statements per call."""
    with pg.connect() as db:
        db.execute("ALTER SYSTEM SET log_statement = 'all'")
        db.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    def post(path: str, body: dict) -> tuple[int, bytes, list[str]]:
        time.sleep(0.1)
        before = pg.log_path.stat().st_size
        conn.request("POST", path, json.dumps(body), headers)
        r = conn.getresponse()
        data = r.read()
        time.sleep(0.1)
        with open(pg.log_path, "rb") as f:
            f.seek(before)
            text = f.read().decode(errors="replace")
        stmts = []
        for line in text.splitlines():
            for marker in ("LOG:  statement: ", "LOG:  execute "):
                if marker in line:
                    stmts.append(line.split(marker, 1)[1])
        return r.status, data, stmts

    counts = {"next_task": [], "submit_ranking": []}
    sample = {}
    try:
        for cycle in range(cycles + 2):  # two warm-up cycles reach warm DB connections in the workers
            status, data, stmts = post(f"/api/projects/{project}/next-task/", {"kind": "ranking"})
            if status != 200:
                raise RuntimeError(f"probe next-task answered {status}")
            task = json.loads(data)
            if cycle >= 2:
                counts["next_task"].append(len(stmts))
                sample["next_task"] = stmts
            entries = [{"candidate": c["id"], "rank": i + 1} for i, c in enumerate(task["candidates"])]
            status, _, stmts = post(f"/api/tasks/{task['id']}/submit-ranking/",
                                    {"entries": entries, "seconds_spent": 1.0})
            if status != 201:
                raise RuntimeError(f"probe submit answered {status}")
            if cycle >= 2:
                counts["submit_ranking"].append(len(stmts))
                sample["submit_ranking"] = stmts
    finally:
        conn.close()
        with pg.connect() as db:
            db.execute("ALTER SYSTEM RESET log_statement")
            db.execute("SELECT pg_reload_conf()")
    return {"counts": counts, "median": {k: statistics.median(v) for k, v in counts.items()},
            "sample": {k: [s[:300] for s in v] for k, v in sample.items()}}


# --------------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------------


def prepare_database(pg: Postgres, env: dict, name: str) -> dict:
    env = {**env, "DATABASE_URL": pg.create_database(name)}
    log(f"{name}: migrating")
    run_child(env, "manage.py", "migrate", "--noinput", "-v0", capture=False)
    return env


def one_run(args, run_no: int, env: dict, pg: Postgres, gun: Gunicorn, stop: threading.Event) -> dict:
    """Seed a project in the (fresh) database behind ``gun``, run the labelers, check the database."""
    name = f"bench-{run_no}-{uuid.uuid4().hex[:6]}"
    log(f"run {run_no}: seeding {args.tasks} ranking tasks (k=4, overlap {args.overlap}) and "
        f"{args.labelers} labelers")
    seeded = seed(env, name, args.tasks, args.labelers, args.overlap)
    log(f"run {run_no}: seeded project {seeded['project']} in {seeded['seed_seconds']} s; "
        f"{args.labelers} labelers for {args.warmup:g} s warm-up + {args.duration:g} s")
    with pg.connect() as db:
        db.execute("VACUUM ANALYZE")
        db.execute("CHECKPOINT")
    background = None
    if args.quiet_wait > 0:
        background = wait_for_quiet(args.quiet_wait)
        log(f"run {run_no}: other processes use {background} cores just before the run")

    user_of_token = dict(zip(seeded["tokens"], seeded["users"], strict=True))
    budget = CycleBudget(args.max_cycles)
    deadline_box = [float("inf")]
    labelers = [Labeler(i, tok, gun.port, seeded["project"], stop, deadline_box, budget)
                for i, tok in enumerate(seeded["tokens"])]
    roots = {"gunicorn": gun.proc.pid, "postgres": pg.postmaster_pid()}
    t_start = time.perf_counter()
    t_measure = t_start + args.warmup
    deadline_box[0] = t_measure + args.duration
    for lab in labelers:
        lab.start()
    # CPU accounting over the measured window.
    while time.perf_counter() < t_measure and any(lab.is_alive() for lab in labelers):
        time.sleep(0.05)
    workers = {f"worker{i}": pid for i, pid in enumerate(gun.workers())}
    cpu0, self0, busy0 = cpu_seconds({**roots, **workers}), sum(os.times()[:2]), machine_busy_seconds()
    while any(lab.is_alive() for lab in labelers):
        for lab in labelers:
            lab.join(timeout=0.2)
        if stop.is_set():
            break
    t_end = time.perf_counter()
    cpu1, self1, busy1 = cpu_seconds({**roots, **workers}), sum(os.times()[:2]), machine_busy_seconds()
    window = max(t_end - t_measure, 1e-9)

    next_calls = [c for lab in labelers for c in lab.next_calls]
    submit_calls = [c for lab in labelers for c in lab.submit_calls]
    cycles_all = [c for lab in labelers for c in lab.cycles]
    cycles_measured = [c for c in cycles_all if c[0] >= t_measure]
    drained = [lab.drained_at for lab in labelers if lab.drained_at]
    with pg.connect() as db:
        checks = integrity_checks(db, seeded["project"], labelers, user_of_token)
    cycle_ms = sorted((e - s) * 1000 for s, e in cycles_measured)
    result = {
        "run": run_no,
        "project": seeded["project"],
        "seed_seconds": seeded["seed_seconds"],
        "measured_seconds": round(window, 2),
        "cycles_measured": len(cycles_measured),
        "cycles_total": len(cycles_all),
        "cycles_per_s": round(len(cycles_measured) / window, 1),
        "requests_per_s": round(sum(1 for c in next_calls + submit_calls if c[0] >= t_measure) / window, 1),
        "next_task": latency_summary(next_calls, t_measure),
        "submit_ranking": latency_summary(submit_calls, t_measure),
        "cycle": {"p50_ms": round(pct(cycle_ms, 50), 1) if cycle_ms else None,
                  "p99_ms": round(pct(cycle_ms, 99), 1) if cycle_ms else None},
        "status_counts": {"next_task": status_counts(next_calls), "submit_ranking": status_counts(submit_calls)},
        "cpu_cores_busy_before_run": background,
        "queue_drained": bool(drained),
        "queue_drained_after_s": round(min(drained) - t_start, 1) if drained else None,
        "labeler_errors": [lab.error for lab in labelers if lab.error],
        "cpu_seconds_in_window": {
            **{k: round(cpu1[k] - cpu0[k], 1) for k in roots},
            "benchmark_client": round(self1 - self0, 1),
            # Keep-alive connections stay with the worker that accepted them: an uneven spread shows here.
            "per_gunicorn_worker": [round(cpu1[k] - cpu0[k], 1) for k in workers],
        },
        "integrity": checks,
    }
    cpu_total = sum(cpu1[k] - cpu0[k] for k in roots) + (self1 - self0)
    result["cpu_ms_per_cycle"] = round(1000 * cpu_total / len(cycles_measured), 1) if cycles_measured else None
    result["cpu_cores_busy"] = round(cpu_total / window, 2)
    # Anything else running on the machine meanwhile (other jobs, and backends that exited): noise.
    result["cpu_cores_busy_other_processes"] = round(max(0.0, (busy1 - busy0) - cpu_total) / window, 2)
    errors = {k: {s: n for s, n in v.items() if s not in ("200", "201", "204")}
              for k, v in result["status_counts"].items()}
    result["errors"] = {k: v for k, v in errors.items() if v}
    log(f"run {run_no}: {result['cycles_per_s']} cycles/s, next-task p50/p95/p99 "
        f"{result['next_task']['p50_ms']}/{result['next_task']['p95_ms']}/{result['next_task']['p99_ms']} ms, "
        f"submit {result['submit_ranking']['p50_ms']}/{result['submit_ranking']['p95_ms']}/"
        f"{result['submit_ranking']['p99_ms']} ms, errors {result['errors'] or 'none'}, "
        f"integrity {'OK' if checks['ok'] else 'FAILED'}")
    if result["queue_drained"]:
        log(f"run {run_no}: WARNING the queue ran out after {result['queue_drained_after_s']} s; "
            f"use more --tasks for a steady-state number")
    if result["errors"] and any(k.startswith("5") for v in errors.values() for k in v):
        log("gunicorn log tail:\n" + gun.tail())
    return result


def git_state() -> dict:
    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=ROOT, text=True, capture_output=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "server_code_modified": bool(git("status", "--porcelain", "--", "annotation", "platform"))}


def median_of(results: list[dict], *path: str):
    values = []
    for r in results:
        v = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if v is not None:
            values.append(v)
    return round(statistics.median(values), 1) if values else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labelers", type=int, default=16, help="concurrent simulated labelers (default 16)")
    p.add_argument("--tasks", type=int, default=3000, help="ranking tasks seeded per run (default 3000)")
    p.add_argument("--overlap", type=int, default=1, help="labelers per task (project overlap, default 1)")
    p.add_argument("--duration", type=float, default=30, help="measured seconds per run (default 30)")
    p.add_argument("--warmup", type=float, default=5, help="unmeasured seconds before that (default 5)")
    p.add_argument("--max-cycles", type=int, default=None, help="stop after this many cycles in all")
    p.add_argument("--runs", type=int, default=1,
                   help="repeat the run, each with a fresh database and gunicorn; report medians (default 1)")
    p.add_argument("--workers", type=int,
                   default=int(os.environ.get("GUNICORN_WORKERS", DEFAULT_WORKERS)),
                   help=f"gunicorn workers (env GUNICORN_WORKERS, default {DEFAULT_WORKERS})")
    p.add_argument("--threads", type=int,
                   default=int(os.environ.get("GUNICORN_THREADS", DEFAULT_THREADS)),
                   help=f"gunicorn threads per worker (env GUNICORN_THREADS, default {DEFAULT_THREADS})")
    p.add_argument("--app", default="rlhf_platform.wsgi",
                   help="WSGI app for gunicorn (default rlhf_platform.wsgi; another one, e.g. a prototype on "
                        "PYTHONPATH, for comparisons)")
    p.add_argument("--quiet-wait", type=float, default=0, metavar="SECONDS",
                   help="before each run, wait up to this long for other processes to leave the CPUs idle")
    p.add_argument("--fast-pg", action="store_true",
                   help="run PostgreSQL with fsync=off etc. like the test suite (default: durable settings)")
    p.add_argument("--no-query-count", action="store_true", help="skip counting SQL statements per call")
    p.add_argument("--json-out", type=Path, help="also write the JSON summary here")
    p.add_argument("--keep-logs", type=Path, help="copy gunicorn and PostgreSQL logs into this directory")
    args = p.parse_args()
    if args.labelers < 1 or args.tasks < 1 or args.duration <= 0 or args.runs < 1:
        p.error("--labelers, --tasks, --duration and --runs must be positive")

    tmp = Path(tempfile.mkdtemp(prefix="rlhf-bench-"))
    pg = Postgres(tmp, free_port(), fast=args.fast_pg)
    gun: Gunicorn | None = None
    stop = threading.Event()

    stop_on_signals()
    try:
        log(f"starting PostgreSQL {pg.bin.parent.name} on 127.0.0.1:{pg.port} in {tmp}"
            + (" (fsync off)" if args.fast_pg else ""))
        pg.start()
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "rlhf_platform.settings",
            "VAR_DIR": str(tmp / "var"),
            "SECRET_KEY": "bench-" + uuid.uuid4().hex,
            "DEBUG": "false",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "LOG_LEVEL": "WARNING",
        }
        env.pop("GUNICORN_ACCESSLOG", None)
        results = []
        for run_no in range(1, args.runs + 1):
            # Each run gets a fresh database and a fresh gunicorn, so runs are independent samples.
            run_env = prepare_database(pg, env, f"rlhf_run{run_no}")
            gun = Gunicorn(tmp, free_port(), run_env, args.workers, args.threads, args.app)
            log(f"run {run_no}: starting gunicorn ({args.workers} workers × {args.threads} threads) "
                f"on 127.0.0.1:{gun.port}")
            gun.start()
            results.append(one_run(args, run_no, run_env, pg, gun, stop))
            if run_no < args.runs:
                gun.stop()
        env = run_env

        queries = None
        if not args.no_query_count:
            log("counting SQL statements per call (PostgreSQL log_statement=all, one labeler)")
            probe = seed(env, f"bench-probe-{uuid.uuid4().hex[:6]}", 20, 2, 1)
            queries = {"postgres_statements": pg_statements_per_call(pg, gun.port, probe["project"],
                                                                     probe["tokens"][0], cycles=5)}
            orm = json.loads(run_child(env, __file__, "_queries", "--project", str(probe["project"]),
                                       "--token", probe["tokens"][1]).strip().splitlines()[-1])
            queries["django_orm_queries"] = {
                "counts": orm["counts"],
                "median": {k: statistics.median(v) for k, v in orm["counts"].items()},
                "sql": {k: [q[:300] for q in v] for k, v in orm["sql"].items()},
            }
            if args.app != "rlhf_platform.wsgi":
                queries["django_orm_queries"]["note"] = "measured in-process on rlhf_platform, not on --app"

        summary = {
            "benchmark": "labeling_cycle",
            "command": " ".join([".venv/bin/python", "bench/labeling_cycle.py", *sys.argv[1:]]),
            "config": {
                "labelers": args.labelers, "tasks": args.tasks, "overlap": args.overlap, "k": 4,
                "lease_seconds": 900, "duration_s": args.duration, "warmup_s": args.warmup,
                "max_cycles": args.max_cycles, "runs": args.runs, "gunicorn_workers": args.workers,
                "gunicorn_threads": args.threads, "wsgi_app": args.app, "postgres_durable": not args.fast_pg,
                "cpus": os.cpu_count(), "python": sys.version.split()[0], **git_state(),
            },
            "median": {
                "cycles_per_s": median_of(results, "cycles_per_s"),
                "cpu_ms_per_cycle": median_of(results, "cpu_ms_per_cycle"),
                "cpu_cores_busy_other_processes": median_of(results, "cpu_cores_busy_other_processes"),
                "requests_per_s": median_of(results, "requests_per_s"),
                **{f"{call}_{q}": median_of(results, call, q)
                   for call in ("next_task", "submit_ranking") for q in ("p50_ms", "p95_ms", "p99_ms")},
            },
            "integrity_ok_all_runs": all(r["integrity"]["ok"] for r in results),
            "errors_any_run": any(r["errors"] or r["labeler_errors"] for r in results),
            "runs": results,
            "queries_per_call": queries,
        }
        text = json.dumps(summary, indent=2)
        print(text)
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(text + "\n")
        return 0 if summary["integrity_ok_all_runs"] else 1
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        stop.set()
        return 130
    finally:
        tear_down(stop, tmp, args.keep_logs, [tmp / "gunicorn.log"], [gun], pg)
        log("stopped gunicorn and PostgreSQL; removed " + str(tmp))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_queries":
        queries_main(sys.argv[2:])
    else:
        sys.exit(main())
