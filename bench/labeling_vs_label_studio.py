#!/usr/bin/env python3
"""Labeling cycle against Label Studio, side by side in one run (issue 13): our server and Label Studio, each on
SQLite and on PostgreSQL, with the same simulated labelers, runs alternating.

One command, self-contained, loopback only, stops by itself. Once, the Label Studio virtualenv:

    bench/setup_label_studio_venv.sh        # .venv-ls: label-studio[uwsgi]==1.23.2 (no torch)

then, on an idle machine (about 25 min with the defaults: 3 rounds × 4 runs of 10 + 30 s, plus about 5 min
of preparation):

    .venv/bin/python bench/labeling_vs_label_studio.py --labelers 16 --duration 30 --rounds 3 \\
        --json-out bench/results/labeling_vs_label_studio.json

A quick smoke test: ``--labelers 2 --tasks 200 --ls-tasks 200 --warmup 2 --duration 5 --rounds 1``.

What it does:

1. starts a throwaway PostgreSQL cluster on 127.0.0.1 (``harness.Postgres``; default durable settings unless
   ``--fast-pg``), shared by both systems, one database each;
2. prepares, once per system and engine, a template database that every run gets a fresh copy of
   (``CREATE DATABASE … TEMPLATE`` on PostgreSQL, SQLite's backup API for SQLite files):
   - **ours**: ``manage.py migrate``, then one project (k=4, ``--overlap``, lease 900 s) with ``--tasks``
     ranking tasks through ``annotation.services.bulk_create_prompts`` and ``--labelers`` labeler accounts with
     API tokens (``harness.seed``). SQLite exactly as ``scripts/run.sh`` configures it: no ``DATABASE_URL``, so
     the settings' default file ``$VAR_DIR/db.sqlite3`` (WAL, ``BEGIN IMMEDIATE``);
   - **Label Studio** (``--ls-venv``, made by ``bench/setup_label_studio_venv.sh``): its ``manage.py migrate``;
     an organization, an owner and ``--labelers`` distinct annotator accounts, made inside Label Studio's own
     Django with its own functions (``create_organization``, ``User.objects.create_user``, ``add_user``) as
     ``label-studio init`` does, each with an API token: a personal access token (JWT; the default for a new
     organization in 1.23, exchanged for an access token at ``/api/token/refresh/`` before each run) or, with
     ``--ls-auth legacy``, a legacy ``Token``; then, **through its HTTP API**, a project with a 4-response
     Ranker labeling config (``<List>`` + ``<Ranker>``, as the "LLM Ranker" template, without buckets),
     ``maximum_annotations`` = ``--overlap``, and ``--ls-tasks`` tasks (a prompt and 4 responses each,
     ``POST /api/projects/{id}/import``). Label Studio selects its database from ``DJANGO_DB`` (``sqlite`` with
     ``DATABASE_NAME``; ``default`` = PostgreSQL with ``POSTGRE_NAME/USER/PASSWORD/HOST/PORT``);
3. runs ``--rounds`` rounds; each round runs every (system, engine) once, in the order ours/SQLite,
   LS/SQLite, ours/PostgreSQL, LS/PostgreSQL, reversed every other round. A run: fresh copy of the template,
   start the server, ``--labelers`` threads (one keep-alive connection each, one account each) for
   ``--warmup`` unmeasured seconds and ``--duration`` measured seconds, stop the server, check the database;
   - ours: gunicorn exactly as production (``platform/gunicorn.conf.py``: 2 workers per core, 4 threads),
     ``POST /api/projects/{id}/next-task/`` → ``POST /api/tasks/{id}/submit-ranking/``;
   - Label Studio: its documented production server, uWSGI with the settings of its ``deploy/uwsgi.ini``
     (``LS_UWSGI_SETTINGS`` below: ``http`` router, 2 processes per core, 1 thread each, ``cheaper``,
     ``lazy-apps``, ``thunder-lock``, harakiri 120 s …; only the bind address, pidfile and stats socket are
     moved to loopback and the temporary directory, and the log encoders, which only format log lines, are
     left out), ``GET /api/projects/{id}/next/`` → ``POST /api/tasks/{id}/annotations/`` with a Ranker
     result. Sentry, analytics and the version check are switched off (``SENTRY_DSN=``, …): the machine has
     no network, and this only spares Label Studio work;
4. prints a JSON summary (``--json-out FILE`` writes it too): per system and engine the median over rounds of
   cycles/s and of each call's p50/p95/p99, errors, connection errors and reconnects, CPU per cycle;
   integrity (ours: ``harness.integrity_checks``: over-assignment and lost submissions; Label Studio: tasks
   annotated more than ``maximum_annotations`` times, by more labelers than that, twice by one labeler,
   tasks handed by next to more labelers than the overlap, and acknowledged annotations missing); the ratio
   ours / Label Studio per engine (of the medians, and per round); and the issue's targets at 16 labelers.
   Exit status 1 when one of our integrity checks failed.

The client is the same for both: each labeler keeps one HTTP/1.1 connection alive. uWSGI's ``http`` router
(Label Studio's ini sets no ``http-keepalive``) answers HTTP/1.1 without ``Connection: close`` and then closes
the connection, so the client does what urllib3 and curl do: before reusing a connection it checks whether
the server closed it (then opens a new one), and a request that fails on a reused connection before any
answer came is sent again once on a new one (the server never read it). These show as ``reconnects``,
``connections_found_closed_by_server`` and ``requests_resent_on_a_new_connection``, not as errors; with
gunicorn (keep-alive 30 s) they stay at 0. Beyond that, only ours retries a request that got no answer (both
its calls are idempotent); a Label Studio annotation POST that failed otherwise is not sent again (it is not
idempotent), so the duplicates counted for Label Studio are its own: tasks annotated by more labelers than
the overlap cannot come from a resend (``task_labeler_pairs_annotated_twice`` would show one).

Everything it started is stopped, and the temporary directory removed, on success, on error and on Ctrl-C.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from pathlib import Path

from harness import (  # bench/harness.py, beside this file
    Client,
    CycleBudget,
    Gunicorn,
    Labeler,
    Postgres,
    ServerProcess,
    SqliteDB,
    _words,
    copy_sqlite,
    free_port,
    integrity_checks,
    latency_summary,
    run_child,
    seed,
    status_counts,
    stop_on_signals,
    tear_down,
)
from labeling_cycle import git_state, log, machine_busy_seconds, median_of, wait_for_quiet

ROOT = Path(__file__).resolve().parent.parent
LS_VERSION = "1.23.2"  # bench/setup_label_studio_venv.sh installs this one
DEFAULT_WORKERS = (os.cpu_count() or 1) * 2  # platform/gunicorn.conf.py's defaults
DEFAULT_THREADS = 4
ENGINES = ("sqlite", "postgresql")
SYSTEMS = ("ours", "label-studio")
K = 4

# Label Studio's deploy/uwsgi.ini (HumanSignal/label-studio), as settings. ``processes`` and ``threads`` are its
# defaults (``%k * 2`` and 1, unless UWSGI_PROCESSES / UWSGI_NUMBER_OF_THREADS), filled in by LabelStudio.
LS_UWSGI_SETTINGS = [
    ("module", "core.wsgi:application"), ("master", "true"), ("cheaper", "true"), ("single-interpreter", "true"),
    ("vacuum", "true"), ("die-on-term", "true"), ("buffer-size", "65535"), ("http-timeout", "300"),
    ("stats-http", "true"), ("memory-report", "true"), ("auto-procname", "true"), ("procname-prefix", "ls-"),
    ("need-app", "true"), ("env", "APP_WEBSERVER=uwsgi"), ("ignore-sigpipe", "true"),
    ("ignore-write-errors", "true"), ("disable-write-exception", "true"), ("harakiri", "120"),
    ("harakiri-verbose", "true"), ("post-buffering", "4096"), ("disable-logging", "true"), ("log-5xx", "true"),
    ("enable-threads", "true"), ("thunder-lock", "true"), ("lazy-apps", "true"), ("max-requests", "5000"),
    ("reload-on-rss", "2048"), ("worker-reload-mercy", "300"),
]

# A prompt and four responses, ranked with Label Studio's Ranker tag (its "LLM Ranker" template, no buckets).
LS_LABEL_CONFIG = """<View>
  <Text name="prompt" value="$prompt"/>
  <List name="answers" value="$items" title="Responses"/>
  <Ranker name="rank" toName="answers"/>
</View>"""

# Runs inside Label Studio's Django (its venv, its settings): the organization and the accounts, as
# ``label-studio init`` makes its user, plus one API token each. Prints one line "SEED {json}".
LS_SEED_CODE = r"""
import json, sys
args = json.loads(sys.argv[1])
sys.path.insert(0, args["ls_dir"])
import django
django.setup()
from organizations.functions import create_organization
from users.models import User

def token(user):
    if args["auth"] == "legacy":
        from rest_framework.authtoken.models import Token
        return Token.objects.get_or_create(user=user)[0].key
    from jwt_auth.models import LSAPIToken
    return LSAPIToken.for_user(user).get_full_jwt()  # a personal access token (refresh token)

admin = User.objects.create_superuser(email="owner@bench.invalid", password=args["password"])
org = create_organization(title="bench", created_by=admin, legacy_api_tokens_enabled=args["auth"] == "legacy")
admin.active_organization = org
admin.save(update_fields=["active_organization"])
out = {"owner_token": token(admin), "users": [], "tokens": []}
for i in range(args["labelers"]):
    user = User.objects.create_user(email=f"labeler-{i:03d}@bench.invalid", password=args["password"],
                                    username=f"labeler-{i:03d}")
    org.add_user(user)
    user.active_organization = org
    user.save(update_fields=["active_organization"])
    out["users"].append(user.pk)
    out["tokens"].append(token(user))
print("SEED " + json.dumps(out))
"""


# --------------------------------------------------------------------------------------------------
# Label Studio: its server and its API.
# --------------------------------------------------------------------------------------------------


def http_json(port: int, method: str, path: str, body=None, headers: dict | None = None,
              timeout: float = 600) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, None if body is None else json.dumps(body).encode(),
                     {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})})
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    try:
        return r.status, json.loads(data) if data else None
    except ValueError:
        return r.status, data[:2000].decode(errors="replace")


class LabelStudio(ServerProcess):
    """Label Studio under uWSGI (its deploy/uwsgi.ini settings) on a loopback port."""

    def __init__(self, tmp: Path, name: str, env: dict, venv: Path, processes: int, threads: int):
        self.tmp, self.name, self.env, self.venv = tmp, name, env, venv
        self.processes, self.threads = processes, threads
        self.port = free_port()
        self.log_path = tmp / f"uwsgi-{name}.log"
        self.stop_timeout = 30.0  # die-on-term

    @staticmethod
    def package_dir(venv: Path) -> Path:
        code = "import importlib.util as u; print(u.find_spec('label_studio').submodule_search_locations[0])"
        out = subprocess.run([str(venv / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True)
        return Path(out.stdout.strip())

    def ini(self) -> Path:
        ls_dir = self.package_dir(self.venv)
        lines = ["[uwsgi]", f"chdir = {ls_dir}", f"http = 127.0.0.1:{self.port}",
                 f"processes = {self.processes}", f"threads = {self.threads}",
                 f"pidfile = {self.tmp / f'uwsgi-{self.name}.pid'}", f"stats = 127.0.0.1:{free_port()}"]
        lines += [f"{k} = {v}" for k, v in LS_UWSGI_SETTINGS]
        path = self.tmp / f"uwsgi-{self.name}.ini"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        ini = self.ini()
        self.launch([str(self.venv / "bin" / "uwsgi"), "--ini", str(ini)], self.tmp, self.env)
        deadline = time.monotonic() + 180  # lazy-apps: each worker imports Label Studio itself
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uWSGI exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                status, _ = http_json(self.port, "GET", "/health/", timeout=10)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Label Studio did not answer /health/ within 180 s:\n{self.tail()}")



def ls_ranking(idx: int, task: dict) -> list[str]:
    """Labeler ``idx``'s order of the task's responses (its own, always the same for the same task)."""
    ids = [item["id"] for item in task["data"]["items"]]
    return sorted(ids, key=lambda i: zlib.crc32(f"{task['id']}/{i}/{idx}".encode()))


class LSLabeler(Labeler):
    """Repeats Label Studio's next task → annotation (a Ranker result) until the deadline, the cycle budget or
    an empty queue (404). The annotation POST is sent once: Label Studio does not make it idempotent."""

    def __init__(self, idx: int, token: str, port: int, project: int, stop: threading.Event,
                 deadline_box: list, budget: CycleBudget, scheme: str):
        super().__init__(idx, token, port, project, stop, deadline_box, budget)
        self.client = Client(port, token, scheme=scheme, check_dropped=True)

    def _loop(self) -> None:
        next_path = f"/api/projects/{self.project}/next/"
        while not self.stop_event.is_set() and time.perf_counter() < self.deadline_box[0]:
            if not self.budget.take():
                return
            t0 = time.perf_counter()
            self.client.attempts = 2
            status, data = self.client.request("GET", next_path, None, self.next_calls)
            if status == 404:
                self.drained_at = time.perf_counter()
                return
            if status != 200:
                time.sleep(0.05)
                continue
            task = json.loads(data)
            self.handed.append(task["id"])
            body = {
                "result": [{"id": f"rank{task['id']}", "from_name": "rank", "to_name": "answers", "type": "ranker",
                            "origin": "manual", "value": {"ranker": {"rank": ls_ranking(self.idx, task)}}}],
                "lead_time": 1.0, "project": self.project,
            }
            self.client.attempts = 1
            status, data = self.client.request("POST", f"/api/tasks/{task['id']}/annotations/?project={self.project}",
                                               body, self.submit_calls)
            if status == 201:
                annotation = json.loads(data)
                self.submitted.append((annotation["id"], task["id"], status))
                self.cycles.append((t0, time.perf_counter()))
            else:
                time.sleep(0.05)


def ls_integrity(db, project: int, overlap: int, labelers: list[LSLabeler], user_of_token: dict[str, int]) -> dict:
    """Label Studio's duplicate assignments and lost annotations, from its tables and what the labelers were told.
    ``db``: a psycopg connection or a ``harness.SqliteDB``."""
    q = lambda sql, *a: db.execute(sql, a).fetchall()  # noqa: E731
    live = "FROM task_completion a JOIN task t ON t.id = a.task_id WHERE t.project_id = %s AND a.was_cancelled = %s"
    checks = {
        "tasks_annotated_more_than_overlap": len(q(
            f"SELECT a.task_id {live} GROUP BY a.task_id HAVING count(*) > %s", project, False, overlap)),
        "tasks_annotated_by_more_labelers_than_overlap": len(q(
            f"SELECT a.task_id {live} GROUP BY a.task_id HAVING count(DISTINCT a.completed_by_id) > %s",
            project, False, overlap)),
        "task_labeler_pairs_annotated_twice": len(q(
            f"SELECT a.task_id {live} GROUP BY a.task_id, a.completed_by_id HAVING count(*) > 1", project, False)),
    }
    db_annotations = {row[0]: (row[1], row[2]) for row in q(
        f"SELECT a.id, a.task_id, a.completed_by_id {live}", project, False)}
    handed_to = defaultdict(set)
    for lab in labelers:
        for task_id in lab.handed:
            handed_to[task_id].add(user_of_token[lab.token])
    checks["tasks_handed_to_more_labelers_than_overlap"] = sum(len(u) > overlap for u in handed_to.values())
    acked = {}
    for lab in labelers:
        for annotation_id, task_id, _ in lab.submitted:
            acked[annotation_id] = (task_id, user_of_token[lab.token])
    checks["acknowledged_annotations_missing_or_wrong_in_db"] = sum(
        db_annotations.get(a) != who for a, who in acked.items())
    checks["annotations_in_db_never_acknowledged"] = sum(a not in acked for a in db_annotations)
    return {"ok": all(v == 0 for v in checks.values()), **checks, "annotations_201": len(acked),
            "annotations_in_db": len(db_annotations), "tasks_handed_out": len(handed_to)}


# --------------------------------------------------------------------------------------------------
# Driving labelers (shared with bench/queue_scale.py).
# --------------------------------------------------------------------------------------------------


def tree_cpu_seconds(roots: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds used so far by each named process tree, including the processes of the tree that have
    exited and been reaped (the cutime/cstime of their parent): PostgreSQL backends of a server that connects
    per request (Label Studio) and recycled workers count too."""
    table, kids = {}, defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            f = stat[stat.rindex(")") + 2:].split()
            table[int(entry)] = sum(int(x) for x in f[11:15])  # utime, stime, cutime, cstime
            kids[int(f[1])].append(int(entry))
    out = {}
    for name, root in roots.items():
        total, stack = 0, [root] if root else []
        while stack:
            pid = stack.pop()
            total += table.get(pid, 0)
            stack.extend(kids.get(pid, []))
        out[name] = total / os.sysconf("SC_CLK_TCK")
    return out


def drive(labelers: list[Labeler], deadline_box: list, warmup: float, duration: float, stop: threading.Event,
          roots: dict[str, int | None], ok_statuses: set, on_measure_start=None) -> dict:
    """Run the labelers for ``warmup`` + ``duration`` seconds (or until they stop); the numbers of the measured
    window. ``roots``: process trees whose CPU is accounted (server, database). ``on_measure_start`` is called
    when the measured window opens."""
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    deadline_box[0] = t_measure + duration
    for lab in labelers:
        lab.start()
    while time.perf_counter() < t_measure and any(lab.is_alive() for lab in labelers):
        time.sleep(0.05)
    if on_measure_start is not None:
        on_measure_start()
    cpu0, self0, busy0 = tree_cpu_seconds(roots), sum(os.times()[:2]), machine_busy_seconds()
    while any(lab.is_alive() for lab in labelers):
        for lab in labelers:
            lab.join(timeout=0.2)
        if stop.is_set():
            break
    t_end = time.perf_counter()
    cpu1, self1, busy1 = tree_cpu_seconds(roots), sum(os.times()[:2]), machine_busy_seconds()
    window = max(t_end - t_measure, 1e-9)
    next_calls = [c for lab in labelers for c in lab.next_calls]
    submit_calls = [c for lab in labelers for c in lab.submit_calls]
    cycles = [c for lab in labelers for c in lab.cycles if c[0] >= t_measure]
    drained = [lab.drained_at for lab in labelers if lab.drained_at]
    measured = {"next_task": [c for c in next_calls if c[0] >= t_measure],
                "submit": [c for c in submit_calls if c[0] >= t_measure]}
    counts = {"next_task": status_counts(next_calls), "submit": status_counts(submit_calls)}
    errors = {call: {s: n for s, n in v.items() if s not in {str(x) for x in ok_statuses} and
                     not s.startswith("stale:")} for call, v in counts.items()}
    conn_errors = Counter(s for calls in (next_calls, submit_calls) for _, _, s in calls
                          if isinstance(s, str) and s.startswith("conn:"))
    cpu_total = sum(cpu1[k] - cpu0[k] for k in roots) + (self1 - self0)
    return {
        "measured_seconds": round(window, 2),
        "cycles_measured": len(cycles),
        "cycles_per_s": round(len(cycles) / window, 1),
        "next_task": latency_summary(next_calls, t_measure),
        "submit": latency_summary(submit_calls, t_measure),
        "status_counts_measured": {call: status_counts(v) for call, v in measured.items()},
        "status_counts_whole_run": counts,
        "errors_whole_run": {k: v for k, v in errors.items() if v},
        "error_count_whole_run": sum(n for v in errors.values() for n in v.values()),
        "connection_errors_whole_run": dict(conn_errors),
        # Each labeler opens one connection; more means the server closed or reset kept-alive connections.
        "connections_opened": sum(lab.client.connects for lab in labelers),
        "reconnects": sum(max(0, lab.client.connects - 1) for lab in labelers),
        "connections_found_closed_by_server": sum(lab.client.dropped_by_server for lab in labelers),
        "requests_resent_on_a_new_connection": sum(lab.client.stale_retries for lab in labelers),
        "queue_drained": bool(drained),
        "queue_drained_after_s": round(min(drained) - t_start, 1) if drained else None,
        "labeler_errors": [lab.error for lab in labelers if lab.error],
        "cpu_seconds_in_window": {**{k: round(cpu1[k] - cpu0[k], 1) for k in roots},
                                  "benchmark_client": round(self1 - self0, 1)},
        "cpu_ms_per_cycle": round(1000 * cpu_total / len(cycles), 1) if cycles else None,
        "cpu_cores_busy_other_processes": round(max(0.0, (busy1 - busy0) - cpu_total) / window, 2),
    }


def _summary_line(tag: str, r: dict) -> str:
    m = r["load"]
    return (f"{tag}: {m['cycles_per_s']} cycles/s, next p50/p99 {m['next_task']['p50_ms']}/"
            f"{m['next_task']['p99_ms']} ms, submit p50/p99 {m['submit']['p50_ms']}/{m['submit']['p99_ms']} ms, "
            f"errors {m['error_count_whole_run']}, reconnects {m['reconnects']}, "
            f"integrity {'OK' if r['integrity']['ok'] else 'FAILED ' + json.dumps(r['integrity'])}")


def _ls_summary_line(tag: str, r: dict) -> str:
    i = r["integrity"]
    return (_summary_line(tag, {**r, "integrity": {"ok": True}}).rsplit(", integrity", 1)[0]
            + f"; Label Studio duplicates: {i['tasks_annotated_by_more_labelers_than_overlap']} tasks annotated by "
              f"more labelers than the overlap, {i['tasks_handed_to_more_labelers_than_overlap']} handed to more, "
              f"{i['acknowledged_annotations_missing_or_wrong_in_db']} acknowledged annotations missing")


# --------------------------------------------------------------------------------------------------
# The benchmark.
# --------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, tmp: Path, pg: Postgres | None, stop: threading.Event):
        self.args, self.tmp, self.pg, self.stop = args, tmp, pg, stop
        self.templates: dict[tuple[str, str], dict] = {}
        self.ours_env = {
            **os.environ, "DJANGO_SETTINGS_MODULE": "rlhf_platform.settings", "SECRET_KEY": "bench-" + uuid.uuid4().hex,
            "DEBUG": "false", "ALLOWED_HOSTS": "127.0.0.1,localhost", "LOG_LEVEL": "WARNING",
        }
        for var in ("GUNICORN_ACCESSLOG", "DATABASE_URL", "VAR_DIR"):
            self.ours_env.pop(var, None)
        self.ls_secret = "bench-" + uuid.uuid4().hex
        self.servers: list = []  # whatever is running, for the cleanup

    # ours ----------------------------------------------------------------------------------------

    def ours_env_for(self, engine: str, name: str) -> dict:
        if engine == "sqlite":  # scripts/run.sh: no DATABASE_URL, so SQLite at $VAR_DIR/db.sqlite3
            return {**self.ours_env, "VAR_DIR": str(self.tmp / name)}
        return {**self.ours_env, "VAR_DIR": str(self.tmp / name), "DATABASE_URL": self.pg.create_database(name)}

    def prepare_ours(self, engine: str) -> None:
        a = self.args
        name = f"ours_{engine}_tpl"
        t0 = time.perf_counter()
        env = self.ours_env_for(engine, name)
        log(f"ours/{engine}: migrating the template database")
        run_child(env, "manage.py", "migrate", "--noinput", "-v0", capture=False)
        log(f"ours/{engine}: seeding {a.tasks} ranking tasks and {a.labelers} labelers")
        seeded = seed(env, f"bench-{engine}", a.tasks, a.labelers, a.overlap)
        if engine == "postgresql":
            with self.pg.connect(name) as db:
                db.execute("VACUUM ANALYZE")
        log(f"ours/{engine}: seeded in {seeded['seed_seconds']} s")
        self.templates[("ours", engine)] = {"name": name, "env": env, "seeded": seeded,
                                            "prepare_seconds": round(time.perf_counter() - t0, 1)}

    def run_ours(self, engine: str, run_name: str) -> dict:
        a, tpl = self.args, self.templates[("ours", engine)]
        seeded = tpl["seeded"]
        if engine == "sqlite":
            env = self.ours_env_for(engine, run_name)
            db_path = Path(env["VAR_DIR"]) / "db.sqlite3"
            copy_sqlite(Path(tpl["env"]["VAR_DIR"]) / "db.sqlite3", db_path)
        else:
            env = {**self.ours_env, "VAR_DIR": str(self.tmp / run_name),
                   "DATABASE_URL": self.pg.create_database(run_name, template=tpl["name"])}
        gun = Gunicorn(self.tmp, free_port(), env, a.workers, a.threads, "rlhf_platform.wsgi", database=engine)
        self.servers.append(gun)
        try:
            gun.start()
            self._quiet()
            user_of_token = dict(zip(seeded["tokens"], seeded["users"], strict=True))
            deadline_box = [float("inf")]
            budget = CycleBudget(a.max_cycles)
            labelers = [Labeler(i, tok, gun.port, seeded["project"], self.stop, deadline_box, budget)
                        for i, tok in enumerate(seeded["tokens"])]
            for lab in labelers:
                lab.client.check_dropped = True  # the same client behaviour as Label Studio's labelers get
            load = drive(labelers, deadline_box, a.warmup, a.duration, self.stop, self._roots(gun.proc.pid, engine),
                         {200, 201, 204})
        finally:
            gun.stop()
            self.servers.remove(gun)
        if load["errors_whole_run"]:
            log("gunicorn log tail:\n" + gun.tail())
        db = SqliteDB(db_path) if engine == "sqlite" else self.pg.connect(run_name)
        with db:
            checks = integrity_checks(db, seeded["project"], labelers, user_of_token)
        if engine == "postgresql":
            self.pg.drop_database(run_name)
        shutil.rmtree(self.tmp / run_name, ignore_errors=True)
        return {"load": load, "integrity": checks}

    # Label Studio --------------------------------------------------------------------------------

    def ls_env_for(self, engine: str, db: str) -> dict:
        a = self.args
        home = self.tmp / "ls-home"
        home.mkdir(exist_ok=True)
        env = {
            "PATH": f"{a.ls_venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "DJANGO_SETTINGS_MODULE": "core.settings.label_studio",
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.tmp / "ls-data"), "SECRET_KEY": self.ls_secret,
            "DEBUG": "false", "LOG_LEVEL": "WARNING",
            # No network here: no Sentry, analytics or PyPI version check (each only costs Label Studio time).
            "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false",
            "LATEST_VERSION_CHECK": "false",
        }
        if engine == "sqlite":
            env.update({"DJANGO_DB": "sqlite", "DATABASE_NAME": str(self.tmp / f"{db}.sqlite3")})
        else:
            env.update({"DJANGO_DB": "default", "POSTGRE_NAME": db, "POSTGRE_USER": "rlhf", "POSTGRE_PASSWORD": "",
                        "POSTGRE_HOST": "127.0.0.1", "POSTGRE_PORT": str(self.pg.port)})
        return env

    def ls_python(self, env: dict, *args: str) -> str:
        r = subprocess.run([str(self.args.ls_venv / "bin" / "python"), *args], cwd=self.ls_dir, env=env, text=True,
                           capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"Label Studio: {' '.join(args[:2])[:80]} failed ({r.returncode}):\n"
                               f"{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
        return r.stdout

    def ls_server(self, env: dict, name: str) -> LabelStudio:
        return LabelStudio(self.tmp, name, env, self.args.ls_venv, self.args.ls_processes, self.args.ls_threads)

    def ls_access_tokens(self, port: int, tokens: list[str]) -> list[str]:
        """Bearer access tokens (valid 5 minutes) for JWT personal access tokens; legacy tokens as they are."""
        if self.args.ls_auth == "legacy":
            return tokens
        out = []
        for refresh in tokens:
            status, body = http_json(port, "POST", "/api/token/refresh/", {"refresh": refresh})
            if status != 200:
                raise RuntimeError(f"Label Studio token refresh answered {status}: {body}")
            out.append(body["access"])
        return out

    def prepare_ls(self, engine: str) -> None:
        a = self.args
        name = f"ls_{engine}_tpl"
        started = time.perf_counter()
        if engine == "postgresql":
            self.pg.create_database(name)
        env = self.ls_env_for(engine, name)
        log(f"label-studio/{engine}: migrating the template database (Label Studio's manage.py migrate)")
        t0 = time.perf_counter()
        self.ls_python(env, "manage.py", "migrate", "--noinput", "-v0")
        log(f"label-studio/{engine}: migrated in {time.perf_counter() - t0:.0f} s; creating the organization and "
            f"{a.labelers} annotator accounts")
        out = self.ls_python(env, "-c", LS_SEED_CODE, json.dumps({
            "ls_dir": str(self.ls_dir), "labelers": a.labelers, "auth": a.ls_auth, "password": uuid.uuid4().hex}))
        seeded = json.loads(next(line for line in out.splitlines() if line.startswith("SEED "))[5:])
        server = self.ls_server(env, f"{engine}-setup")
        self.servers.append(server)
        try:
            server.start()
            owner = self.ls_access_tokens(server.port, [seeded["owner_token"]])[0]
            auth = {"Authorization": f"{self.ls_scheme} {owner}"}
            status, project = http_json(server.port, "POST", "/api/projects/", {
                "title": "bench ranking", "label_config": LS_LABEL_CONFIG, "maximum_annotations": a.overlap}, auth)
            if status != 201:
                raise RuntimeError(f"Label Studio project creation answered {status}: {project}")
            log(f"label-studio/{engine}: importing {a.ls_tasks} tasks through the API")
            rng = random.Random(f"ls-{engine}")
            t0 = time.perf_counter()
            for start in range(0, a.ls_tasks, 1000):
                tasks = [{"data": {"prompt": f"[ls #{i}] " + _words(rng, 30), "items": [
                    {"id": f"r{j}", "title": f"Response {j + 1}", "body": _words(rng, 80)} for j in range(K)]}}
                    for i in range(start, min(start + 1000, a.ls_tasks))]
                status, body = http_json(server.port, "POST", f"/api/projects/{project['id']}/import", tasks, auth)
                if status != 201:
                    raise RuntimeError(f"Label Studio import answered {status}: {body}")
            status, info = http_json(server.port, "GET", f"/api/projects/{project['id']}/", None, auth)
            if info.get("task_number") != a.ls_tasks:
                raise RuntimeError(f"Label Studio holds {info.get('task_number')} tasks, not {a.ls_tasks}")
            log(f"label-studio/{engine}: imported in {time.perf_counter() - t0:.1f} s (project {project['id']})")
        finally:
            server.stop()
            self.servers.remove(server)
        if engine == "postgresql":
            with self.pg.connect(name) as db:
                db.execute("VACUUM ANALYZE")
        self.templates[("label-studio", engine)] = {"name": name, "seeded": {**seeded, "project": project["id"]},
                                                    "prepare_seconds": round(time.perf_counter() - started, 1)}

    def run_ls(self, engine: str, run_name: str) -> dict:
        a, tpl = self.args, self.templates[("label-studio", engine)]
        seeded = tpl["seeded"]
        env = self.ls_env_for(engine, run_name)
        if engine == "sqlite":
            copy_sqlite(self.tmp / f"{tpl['name']}.sqlite3", env["DATABASE_NAME"])
        else:
            self.pg.create_database(run_name, template=tpl["name"])
        server = self.ls_server(env, run_name)
        self.servers.append(server)
        try:
            server.start()
            tokens = self.ls_access_tokens(server.port, seeded["tokens"])
            self._quiet()
            deadline_box = [float("inf")]
            budget = CycleBudget(a.max_cycles)
            labelers = [LSLabeler(i, tok, server.port, seeded["project"], self.stop, deadline_box, budget,
                                  self.ls_scheme) for i, tok in enumerate(tokens)]
            load = drive(labelers, deadline_box, a.warmup, a.duration, self.stop,
                         self._roots(server.proc.pid, engine), {200, 201, 404})
        finally:
            server.stop()
            self.servers.remove(server)
        if any(k.startswith("5") for v in load["errors_whole_run"].values() for k in v):
            log("uWSGI log tail:\n" + server.tail(20))
        user_of_token = dict(zip(tokens, seeded["users"], strict=True))
        db = SqliteDB(env["DATABASE_NAME"]) if engine == "sqlite" else self.pg.connect(run_name)
        with db:
            checks = ls_integrity(db, seeded["project"], a.overlap, labelers, user_of_token)
        if engine == "postgresql":
            self.pg.drop_database(run_name)
        else:
            Path(env["DATABASE_NAME"]).unlink(missing_ok=True)
        return {"load": load, "integrity": checks}

    @property
    def ls_scheme(self) -> str:
        return "Token" if self.args.ls_auth == "legacy" else "Bearer"

    @property
    def ls_dir(self) -> Path:
        if not hasattr(self, "_ls_dir"):
            self._ls_dir = LabelStudio.package_dir(self.args.ls_venv)
        return self._ls_dir

    # shared --------------------------------------------------------------------------------------

    def _roots(self, server_pid: int, engine: str) -> dict:
        roots = {"server": server_pid}
        if engine == "postgresql":
            roots["postgres"] = self.pg.postmaster_pid()
            with self.pg.connect() as db:
                db.execute("CHECKPOINT")
        return roots

    def _quiet(self) -> None:
        if self.args.quiet_wait > 0:
            load = wait_for_quiet(self.args.quiet_wait)
            log(f"other processes use {load} cores just before the run")


def summarize(args, results: list[dict]) -> dict:
    combos: dict[str, dict] = {}
    for system in args.systems:
        for engine in args.engines:
            runs = [r for r in results if r["system"] == system and r["engine"] == engine]
            if not runs:
                continue
            loads = [r["load"] for r in runs]
            combos[f"{system}/{engine}"] = {
                "runs": len(runs),
                "cycles_per_s_each_run": [m["cycles_per_s"] for m in loads],
                "median": {
                    "cycles_per_s": median_of(loads, "cycles_per_s"),
                    **{f"{call}_{q}": median_of(loads, call, q)
                       for call in ("next_task", "submit") for q in ("p50_ms", "p95_ms", "p99_ms")},
                    "cpu_ms_per_cycle": median_of(loads, "cpu_ms_per_cycle"),
                    "cpu_cores_busy_other_processes": median_of(loads, "cpu_cores_busy_other_processes"),
                    "reconnects_per_run": median_of(loads, "reconnects"),
                },
                "errors_all_runs": sum(m["error_count_whole_run"] for m in loads),
                "connection_errors_all_runs": dict(sum((Counter(m["connection_errors_whole_run"]) for m in loads),
                                                       Counter())),
                "reconnects_all_runs": sum(m["reconnects"] for m in loads),
                "connections_found_closed_by_server_all_runs": sum(m["connections_found_closed_by_server"]
                                                                   for m in loads),
                "requests_resent_on_a_new_connection_all_runs": sum(m["requests_resent_on_a_new_connection"]
                                                                    for m in loads),
                "queue_drained_in_a_run": any(m["queue_drained"] for m in loads),
                "integrity_ok_all_runs": all(r["integrity"]["ok"] for r in runs),
                "integrity_totals": {k: sum(r["integrity"][k] for r in runs)
                                     for k in runs[0]["integrity"] if k != "ok"},
            }
    ratios = {}
    for engine in args.engines:
        ours, ls = combos.get(f"ours/{engine}"), combos.get(f"label-studio/{engine}")
        if not ours or not ls or not ls["median"]["cycles_per_s"]:
            continue
        per_round = []
        for rnd in sorted({r["round"] for r in results}):
            o, s = ([r["load"]["cycles_per_s"] for r in results
                     if (r["system"], r["engine"], r["round"]) == (system, engine, rnd)]
                    for system in ("ours", "label-studio"))
            if o and s and s[0]:
                per_round.append(round(o[0] / s[0], 1))
        ratios[engine] = {"cycles_per_s": round(ours["median"]["cycles_per_s"] / ls["median"]["cycles_per_s"], 1),
                          "per_round": per_round}
    targets = {}
    for engine in args.engines:
        ours = combos.get(f"ours/{engine}")
        if not ours:
            continue
        m = ours["median"]
        targets[engine] = {
            "at_least_160_cycles_per_s": (m["cycles_per_s"] or 0) >= 160,
            "p99_under_100_ms_per_call": max(m["next_task_p99_ms"] or 1e9, m["submit_p99_ms"] or 1e9) < 100,
            "zero_over_assignment_and_lost_submissions": ours["integrity_ok_all_runs"],
            "at_least_10x_label_studio": (ratios.get(engine, {}).get("cycles_per_s") or 0) >= 10,
            "note": None if args.labelers == 16 else f"the targets are for 16 labelers; this run had {args.labelers}",
        }
    return {"per_system_and_engine": combos, "ratio_ours_to_label_studio": ratios, "targets": targets}


def ls_versions(venv: Path) -> dict:
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m, json; print(json.dumps("
                        "{p: m.version(p) for p in ('label-studio', 'pyuwsgi', 'django', 'djangorestframework')}))"],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labelers", type=int, default=16, help="concurrent labelers, one account each (default 16)")
    p.add_argument("--tasks", type=int, default=10000,
                   help="ranking tasks in our project (default 10000: more than 200 cycles/s drain in a run)")
    p.add_argument("--ls-tasks", type=int, default=3000, help="tasks in the Label Studio project (default 3000)")
    p.add_argument("--overlap", type=int, default=1, help="labelers per task, both systems (default 1)")
    p.add_argument("--duration", type=float, default=30, help="measured seconds per run (default 30)")
    p.add_argument("--warmup", type=float, default=10,
                   help="unmeasured seconds first (default 10: uWSGI's cheaper mode starts 1 worker, adds more)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every system and engine once (default 3)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: ours,label-studio")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: sqlite,postgresql")
    p.add_argument("--max-cycles", type=int, default=None, help="stop a run after this many cycles in all")
    p.add_argument("--workers", type=int, default=int(os.environ.get("GUNICORN_WORKERS", DEFAULT_WORKERS)),
                   help=f"our gunicorn workers (env GUNICORN_WORKERS, default {DEFAULT_WORKERS})")
    p.add_argument("--threads", type=int, default=int(os.environ.get("GUNICORN_THREADS", DEFAULT_THREADS)),
                   help=f"threads per gunicorn worker (env GUNICORN_THREADS, default {DEFAULT_THREADS})")
    p.add_argument("--ls-venv", type=Path, default=ROOT / ".venv-ls",
                   help="Label Studio's virtualenv (default .venv-ls, from bench/setup_label_studio_venv.sh)")
    p.add_argument("--ls-auth", choices=("jwt", "legacy"), default="jwt",
                   help="Label Studio API tokens: personal access tokens (jwt, its default) or legacy tokens")
    p.add_argument("--ls-processes", type=int,
                   default=int(os.environ.get("UWSGI_PROCESSES", (os.cpu_count() or 1) * 2)),
                   help="uWSGI processes (env UWSGI_PROCESSES; default deploy/uwsgi.ini's: 2 per core)")
    p.add_argument("--ls-threads", type=int, default=int(os.environ.get("UWSGI_NUMBER_OF_THREADS", 1)),
                   help="uWSGI threads per process (env UWSGI_NUMBER_OF_THREADS; default deploy/uwsgi.ini's: 1)")
    p.add_argument("--quiet-wait", type=float, default=0, metavar="SECONDS",
                   help="before each run, wait up to this long for other processes to leave the CPUs idle")
    p.add_argument("--fast-pg", action="store_true", help="PostgreSQL with fsync=off (default: durable settings)")
    p.add_argument("--json-out", type=Path, help="also write the JSON summary here")
    p.add_argument("--keep-logs", type=Path, help="copy the server and PostgreSQL logs into this directory")
    args = p.parse_args()
    args.systems = [s for s in args.systems.split(",") if s]
    args.engines = [e for e in args.engines.split(",") if e]
    if not set(args.systems) <= set(SYSTEMS) or not set(args.engines) <= set(ENGINES):
        p.error(f"--systems from {SYSTEMS}, --engines from {ENGINES}")
    if min(args.labelers, args.tasks, args.ls_tasks, args.rounds) < 1 or args.duration <= 0:
        p.error("--labelers, --tasks, --ls-tasks, --rounds and --duration must be positive")
    if "label-studio" in args.systems:
        args.ls_venv = args.ls_venv.resolve()
        if not (args.ls_venv / "bin" / "uwsgi").exists():
            p.error(f"no uwsgi in {args.ls_venv}: run bench/setup_label_studio_venv.sh first")
        if args.ls_auth == "jwt" and args.warmup + args.duration > 270:
            p.error("Label Studio access tokens live 5 minutes: keep --warmup + --duration under 270 s, or "
                    "use --ls-auth legacy")

    tmp = Path(tempfile.mkdtemp(prefix="rlhf-vs-ls-"))
    pg = Postgres(tmp, free_port(), fast=args.fast_pg) if "postgresql" in args.engines else None
    stop = threading.Event()
    bench = Bench(args, tmp, pg, stop)

    stop_on_signals()
    started = time.perf_counter()
    try:
        if pg is not None:
            log(f"starting PostgreSQL {pg.bin.parent.name} on 127.0.0.1:{pg.port} in {tmp}"
                + (" (fsync off)" if args.fast_pg else ""))
            pg.start()
        for engine in args.engines:
            if "ours" in args.systems:
                bench.prepare_ours(engine)
            if "label-studio" in args.systems:
                bench.prepare_ls(engine)
        order = [(s, e) for e in args.engines for s in args.systems]
        results = []
        for rnd in range(1, args.rounds + 1):
            for system, engine in (order if rnd % 2 else order[::-1]):
                run_name = f"{'ours' if system == 'ours' else 'ls'}_{engine}_r{rnd}"
                log(f"round {rnd}: {system}/{engine}: {args.labelers} labelers, {args.warmup:g} s warm-up + "
                    f"{args.duration:g} s")
                r = (bench.run_ours if system == "ours" else bench.run_ls)(engine, run_name)
                r = {"system": system, "engine": engine, "round": rnd, **r}
                log((_summary_line if system == "ours" else _ls_summary_line)(f"round {rnd}: {system}/{engine}", r))
                if r["load"]["queue_drained"]:
                    log(f"WARNING: the {system} queue ran out after {r['load']['queue_drained_after_s']} s; give more "
                        f"{'--tasks' if system == 'ours' else '--ls-tasks'}")
                results.append(r)
        summary = {
            "benchmark": "labeling_vs_label_studio",
            "command": " ".join([".venv/bin/python", "bench/labeling_vs_label_studio.py", *sys.argv[1:]]),
            "config": {
                "labelers": args.labelers, "tasks_ours": args.tasks, "tasks_label_studio": args.ls_tasks,
                "overlap": args.overlap, "k": K, "duration_s": args.duration, "warmup_s": args.warmup,
                "rounds": args.rounds, "max_cycles": args.max_cycles, "systems": args.systems, "engines": args.engines,
                "ours": {"server": "gunicorn, platform/gunicorn.conf.py", "workers": args.workers,
                         "threads": args.threads, "sqlite": "scripts/run.sh defaults ($VAR_DIR/db.sqlite3)"},
                "label_studio": None if "label-studio" not in args.systems else {
                    **ls_versions(args.ls_venv), "server": "uWSGI with deploy/uwsgi.ini's settings",
                    "processes": args.ls_processes, "threads": args.ls_threads, "auth": args.ls_auth},
                "postgres_durable": not args.fast_pg, "cpus": os.cpu_count(), "python": sys.version.split()[0],
                **git_state(),
            },
            # Migrating and seeding each template database (ours: seed_seconds is the bulk import alone).
            "preparation_seconds": {f"{s}/{e}": {"total": t["prepare_seconds"], "seed": t["seeded"].get("seed_seconds")}
                                    for (s, e), t in bench.templates.items()},
            **summarize(args, results),
            "runs": results,
            "wall_seconds": round(time.perf_counter() - started),
        }
        text = json.dumps(summary, indent=2)
        print(text)
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(text + "\n")
        for engine, ratio in summary["ratio_ours_to_label_studio"].items():
            log(f"{engine}: ours / Label Studio = {ratio['cycles_per_s']}× (per round {ratio['per_round']})")
        ours_ok = all(c["integrity_ok_all_runs"] for k, c in summary["per_system_and_engine"].items()
                      if k.startswith("ours/"))
        return 0 if ours_ok else 1
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        stop.set()
        return 130
    finally:
        tear_down(stop, tmp, args.keep_logs, list(tmp.glob("*.log")), list(bench.servers), pg)
        log("stopped every server; removed " + str(tmp))


if __name__ == "__main__":
    sys.exit(main())
