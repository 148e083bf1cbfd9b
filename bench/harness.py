"""Simulated labelers over HTTP and the processes they talk to, shared by the labeling-cycle benchmark
(``bench/labeling_cycle.py``) and the load and fault tests (``tests/deployment/test_load.py``,
``test_faults.py``).

- ``Postgres``: a throwaway cluster on loopback (as the ``postgres`` user when run as root), which can be
  restarted under load;
- ``Gunicorn``: the web server exactly as production starts it (``platform/gunicorn.conf.py``);
- ``seed``: one project with its ranking (and demonstration) tasks and labelers with API tokens, made in a
  child process (``python bench/harness.py _seed …``) so the caller never imports Django; ``seed_more`` adds
  ranking tasks to an existing project;
- ``SqliteDB`` and ``copy_sqlite``: the checks below on a SQLite file, and a consistent copy of one;
- ``Client`` and ``Labeler``: a keep-alive HTTP connection that resends a request which got no answer
  (both calls are idempotent: next-task returns the held task, a resubmitted label returns the first one
  with 200), and a thread repeating next-task → submit with it;
- ``integrity_checks``: what the database holds against what the labelers were told.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------------
# Seeding, inside Django (this file, run in a child process).
# --------------------------------------------------------------------------------------------------


def _django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlhf_platform.settings")
    for path in (str(ROOT / "platform"), str(ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import django

    django.setup()


def _words(rng, n: int) -> str:
    vocab = ("the model answer should explain why a careful assistant would check facts before it "
             "replies to the user with clear helpful honest and harmless text about science history "
             "cooking travel code math poetry").split()
    return " ".join(rng.choice(vocab) for _ in range(n))


def seed_main(argv: list[str]) -> None:
    """Create one project, its ranking tasks, ``--demonstrations`` demonstration tasks (prompts without
    candidates) and its labelers; print {project, tokens, users} as JSON. With ``--project``, add
    ``--tasks`` more ranking tasks (numbered from ``--start``) to that existing project instead."""
    p = argparse.ArgumentParser(prog="harness.py _seed")
    p.add_argument("--name", required=True)
    p.add_argument("--tasks", type=int, required=True)
    p.add_argument("--demonstrations", type=int, default=0)
    p.add_argument("--labelers", type=int, required=True)
    p.add_argument("--overlap", type=int, default=1)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--chunk", type=int, default=1000)
    p.add_argument("--project", type=int, help="add tasks to this project (no new project, no labelers)")
    p.add_argument("--start", type=int, default=0, help="number of the first task (prompt texts must be new)")
    args = p.parse_args(argv)
    _django_setup()

    import random

    from django.contrib.auth import get_user_model
    from django.db import transaction
    from knox.models import AuthToken

    from annotation import services
    from annotation.models import Membership, Project, Role

    rng = random.Random(args.name if args.start == 0 else f"{args.name}/{args.start}")
    User = get_user_model()
    started = time.perf_counter()
    if args.project is not None:
        project = Project.objects.get(pk=args.project)
        _seed_tasks(project, args.name, range(args.start, args.start + args.tasks), project.k, args.chunk, rng)
        print(json.dumps({"project": project.pk, "tasks_added": args.tasks,
                          "seed_seconds": round(time.perf_counter() - started, 2)}))
        return
    project = Project.objects.create(
        name=args.name, k=args.k, overlap=args.overlap, lease_seconds=900,
        demonstrations_enabled=False, rankings_enabled=True, prompt_writing_enabled=False,
    )
    with transaction.atomic():
        users = User.objects.bulk_create(
            User(username=f"{args.name}-labeler-{i:03d}", password="!") for i in range(args.labelers)
        )
        Membership.objects.bulk_create(Membership(project=project, user=u, role=Role.LABELER) for u in users)
        tokens = [AuthToken.objects.create(user=u)[1] for u in users]  # the secrets: only digests are stored
    _seed_tasks(project, args.name, range(args.start, args.start + args.tasks), args.k, args.chunk, rng)
    if args.demonstrations:
        # Enabled only now, so the ranking prompts above got no demonstration task (seeding stays quick).
        project.demonstrations_enabled = True
        project.save(update_fields=["demonstrations_enabled"])
        services.bulk_create_prompts(project=project, items=[
            {"text": f"[{args.name} demo #{i}] " + _words(rng, 30)} for i in range(args.demonstrations)])
    print(json.dumps({
        "project": project.pk,
        "tokens": tokens,
        "users": [u.pk for u in users],
        "seed_seconds": round(time.perf_counter() - started, 2),
    }))


def _seed_tasks(project, name: str, numbers: range, k: int, chunk: int, rng) -> None:
    """Ranking tasks through the import path (``services.bulk_create_prompts``), ``chunk`` prompts a call."""
    from annotation import services

    for start in range(numbers.start, numbers.stop, chunk):
        items = [
            {"text": f"[{name} #{i}] " + _words(rng, 30), "candidates": [_words(rng, 80) for _ in range(k)]}
            for i in range(start, min(start + chunk, numbers.stop))
        ]
        services.bulk_create_prompts(project=project, items=items)


def run_child(env: dict, *args: str, capture: bool = True) -> str:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, text=True,
                       stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return r.stdout


def seed(env: dict, name: str, tasks: int, labelers: int, overlap: int, demonstrations: int = 0) -> dict:
    out = run_child(env, __file__, "_seed", "--name", name, "--tasks", str(tasks), "--labelers", str(labelers),
                    "--overlap", str(overlap), "--demonstrations", str(demonstrations))
    return json.loads(out.strip().splitlines()[-1])


def seed_more(env: dict, project: int, name: str, start: int, tasks: int) -> dict:
    """Add ``tasks`` ranking tasks, numbered from ``start``, to an existing project (see ``seed_main``)."""
    out = run_child(env, __file__, "_seed", "--name", name, "--tasks", str(tasks), "--labelers", "0",
                    "--project", str(project), "--start", str(start))
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# Processes: PostgreSQL and gunicorn.
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not candidates:
        raise SystemExit("PostgreSQL binaries not found under /usr/lib/postgresql")
    return candidates[-1]


class Postgres:
    def __init__(self, tmp: Path, port: int, fast: bool, extra_options: Sequence[str] = ()):
        self.dir = tmp / "pg"
        self.port = port
        self.fast = fast
        self.extra_options = list(extra_options)  # more ``-c name=value`` server settings
        self.bin = pg_bin()
        self.started = False
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.url = f"postgres://rlhf@127.0.0.1:{port}/postgres"

    def _run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_postgres, *cmd], check=True, **kw)

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        if self.as_postgres:
            shutil.chown(self.dir.parent, "postgres")
            shutil.chown(self.dir, "postgres")
        with open(self.dir.parent / "initdb.log", "w") as f:
            self._run(str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", "rlhf", "--auth=trust",
                      "-E", "UTF8", stdout=f, stderr=subprocess.STDOUT)
        opts = [f"-h 127.0.0.1 -p {self.port} -k {self.dir}", "-c max_connections=200",
                "-c log_line_prefix='%m [%p] '"]
        if self.fast:  # the test suite's settings (scripts/lib.sh): not durable, not production
            opts.append("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        opts += [f"-c {o}" for o in self.extra_options]
        self.options = " ".join(opts)
        self.started = True  # from here on, stop() must run
        self._start()

    def _start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.log_path), "-w",
                  "-t", "60", "start", "-o", self.options, stdout=subprocess.DEVNULL)
        self.wait_ready()

    def wait_ready(self) -> None:
        subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "30"],
                       check=True, stdout=subprocess.DEVNULL)

    def restart(self, down_seconds: float = 0) -> None:
        """Stop (fast: open transactions are rolled back, every connection is cut), stay down for
        ``down_seconds`` and start again with the same options; returns once it accepts connections."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "-t", "60", "stop",
                  stdout=subprocess.DEVNULL)
        time.sleep(down_seconds)
        self._start()

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database, empty or a copy of ``template`` (which nobody may be connected to); returns its
        DATABASE_URL."""
        subprocess.run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "rlhf",
                        *(["-T", template] if template else []), name], check=True)
        self.url = f"postgres://rlhf@127.0.0.1:{self.port}/{name}"
        return self.url

    def drop_database(self, name: str) -> None:
        subprocess.run([str(self.bin / "dropdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "rlhf",
                        "--if-exists", "--force", name], check=True)

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        data = str(self.dir / "data")
        for mode in ("fast", "immediate"):
            r = subprocess.run([*self.as_postgres, str(self.bin / "pg_ctl"), "-D", data, "-m", mode, "-w",
                                "-t", "30", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                return

    def connect(self, dbname: str | None = None):
        """An autocommit psycopg connection to the last database created (or to ``dbname``)."""
        import psycopg

        url = self.url if dbname is None else f"postgres://rlhf@127.0.0.1:{self.port}/{dbname}"
        return psycopg.connect(url, autocommit=True)


class SqliteDB:
    """A SQLite file opened like ``Postgres.connect()``'s connection, for the checks below: ``execute`` takes
    psycopg's ``%s`` placeholders (the checks' SQL is written for both engines), and it is a context manager
    that closes the file."""

    def __init__(self, path: Path | str):
        import sqlite3

        self.conn = sqlite3.connect(str(path), timeout=60, isolation_level=None)

    def execute(self, sql: str, params: Sequence = ()):
        return self.conn.execute(sql.replace("%s", "?"), tuple(params))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> SqliteDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def copy_sqlite(src: Path | str, dst: Path | str) -> None:
    """Copy a SQLite database consistently (the backup API: WAL content included), replacing ``dst``."""
    import sqlite3

    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
    with sqlite3.connect(str(src)) as a, sqlite3.connect(str(dst)) as b:
        a.backup(b)
    a.close()
    b.close()


class ServerProcess:
    """A server started in its own session (process group), logging to ``log_path``; ``stop`` ends the group."""

    log_path: Path
    proc: subprocess.Popen | None = None
    stop_timeout = 25.0

    def launch(self, cmd: list[str], cwd: Path, env: dict) -> None:
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        finally:
            self._log.close()


class Gunicorn(ServerProcess):
    def __init__(self, tmp: Path, port: int, env: dict, workers: int, threads: int, app: str,
                 throttle_writes: str | None = "1000000/min", database: str = "postgresql"):
        self.port = port
        self.app = app
        self.database = database  # the vendor /healthz must report ("postgresql" or "sqlite")
        # The benchmark's labelers are machines: the per-user write throttle (for people and runaway
        # scripts) would cap them, so it is lifted here unless the caller set one (None: the app's own).
        self.env = {**env, "GUNICORN_WORKERS": str(workers), "GUNICORN_THREADS": str(threads)}
        if throttle_writes is not None:
            self.env.setdefault("THROTTLE_WRITES", throttle_writes)
        self.log_path = tmp / "gunicorn.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        gunicorn = Path(sys.executable).parent / "gunicorn"
        self.launch([str(gunicorn), "-c", str(ROOT / "platform" / "gunicorn.conf.py"), "--bind",
                     f"127.0.0.1:{self.port}", self.app], ROOT, self.env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz")
                r = conn.getresponse()
                body = r.read()
                conn.close()
                if r.status == 200:
                    info = json.loads(body)
                    if info.get("database") != self.database:
                        raise RuntimeError(f"gunicorn is not using {self.database}: {info}")
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer /healthz within 60 s:\n{self.tail()}")

    def workers(self) -> list[int]:
        """The worker processes' ids (the master's children)."""
        return children(self.proc.pid) if self.proc is not None else []



def _interrupt(signum, frame):
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP behave like Ctrl-C: the benchmark stops, cleans up (``tear_down``) and exits."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)


def tear_down(stop: threading.Event, tmp: Path, keep_logs: Path | None, logs: Sequence[Path], servers: Sequence,
              pg: Postgres | None) -> None:
    """A benchmark's end, on success, error or Ctrl-C: stop the labelers and every server, keep the logs
    when asked (``keep_logs``), stop PostgreSQL and remove the temporary directory."""
    stop.set()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
    for server in servers:
        if server is not None:
            server.stop()
    if keep_logs:
        keep_logs.mkdir(parents=True, exist_ok=True)
        for src in [*logs, *([pg.log_path] if pg else [])]:
            if src.exists():
                shutil.copy(src, keep_logs / src.name)
    if pg is not None:
        pg.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def proc_table() -> dict[int, tuple[int, int]]:
    """pid → (ppid, cpu ticks) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def children(pid: int) -> list[int]:
    return sorted(p for p, (ppid, _) in proc_table().items() if ppid == pid)


# --------------------------------------------------------------------------------------------------
# The simulated labelers.
# --------------------------------------------------------------------------------------------------

Call = tuple[float, float, object]  # (start, seconds, status): an int, or "conn:<Error>" when no answer came


class Client:
    """One labeler's keep-alive HTTP connection (token auth, JSON).

    A request that got no answer (the connection dropped, the server process died, ``timeout`` passed) or
    that got one of ``retry_statuses`` is sent again with the same body, up to ``attempts`` times in all:
    the first resend at once (a keep-alive connection the server closed), later ones after a growing
    pause. Every attempt is logged."""

    def __init__(self, port: int, token: str, *, timeout: float = 60.0, attempts: int = 2,
                 retry_statuses: Sequence[int] = (), scheme: str = "Token", check_dropped: bool = False):
        self.port, self.timeout, self.attempts, self.retry_statuses = port, timeout, attempts, set(retry_statuses)
        # Before reusing the connection, see whether the server closed it meanwhile, and if so open a new one
        # (as urllib3's pool does): a server without keep-alive then costs reconnects, not failed requests.
        # Also send a request again, once, when it failed on such a connection before any answer came.
        self.check_dropped = check_dropped
        self.dropped_by_server = 0  # connections found closed before a request
        self.stale_retries = 0  # requests sent again because the connection was found closed while sending
        self.answered_on_conn = 0
        self.headers = {"Authorization": f"{scheme} {token}", "Content-Type": "application/json",
                        "Accept": "application/json"}
        self.conn: http.client.HTTPConnection | None = None
        self.connects = 0  # connections opened: 1 when keep-alive held throughout

    def post(self, path: str, body: dict, log_to: list[Call]) -> tuple[object, bytes]:
        return self.request("POST", path, body, log_to)

    def request(self, method: str, path: str, body: dict | None, log_to: list[Call]) -> tuple[object, bytes]:
        payload = None if body is None else json.dumps(body).encode()
        status: object = None
        data = b""
        attempt = stale_retried = 0
        while attempt < self.attempts:
            attempt += 1
            if attempt > 2 or (attempt == 2 and status in self.retry_statuses):
                time.sleep(min(0.1 * 2 ** (attempt - 2), 2.0))
            if self.conn is not None and self.check_dropped and _dropped(self.conn):
                self.dropped_by_server += 1
                self.close()
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                self.connects += 1
                self.answered_on_conn = 0
            t0 = time.perf_counter()
            try:
                self.conn.request(method, path, payload, self.headers)
                r = self.conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException) as exc:
                reused = self.answered_on_conn > 0
                self.close()
                if (self.check_dropped and reused and not stale_retried
                        and isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError))):
                    # A kept-alive connection the server had closed after its last answer (a server without
                    # keep-alive): nothing of this request was read, so it goes again on a new connection, once,
                    # without using up an attempt (curl does the same).
                    stale_retried = 1
                    self.stale_retries += 1
                    log_to.append((t0, time.perf_counter() - t0, f"stale:{type(exc).__name__}"))
                    attempt -= 1
                    continue
                status, data = f"conn:{type(exc).__name__}", b""
                log_to.append((t0, time.perf_counter() - t0, status))
                continue
            status = r.status
            self.answered_on_conn += 1
            log_to.append((t0, time.perf_counter() - t0, status))
            if r.getheader("Connection", "").lower() == "close":
                self.close()
            if status not in self.retry_statuses:
                break
        return status, data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle connection was closed by the server: readable with no request pending means EOF (or a
    reset)."""
    if conn.sock is None:
        return False
    return bool(select.select([conn.sock], [], [], 0)[0])


def submission(idx: int, task: dict) -> tuple[str, dict]:
    """The path and body of labeler ``idx``'s label for ``task`` (from next-task): always the same for the
    same task, so sending it again is the same submission."""
    if task["kind"] == "demonstration":
        return (f"/api/tasks/{task['id']}/submit-demonstration/",
                {"text": f"Labeler {idx} answers task {task['id']} carefully.", "seconds_spent": 1.0})
    order = sorted(task["candidates"], key=lambda c: (c["id"] * 7919 + idx) % 97)  # each labeler's own order
    entries = [{"candidate": c["id"], "rank": rank} for rank, c in enumerate(order, start=1)]
    return f"/api/tasks/{task['id']}/submit-ranking/", {"entries": entries, "seconds_spent": 1.0}


class Labeler(threading.Thread):
    """Repeats next-task → submit until the deadline (``deadline_box[0]``), ``stop``, the cycle budget, or
    an empty queue (204). ``kinds`` is the rotation of task kinds, e.g. four rankings then a
    demonstration; a failed cycle is tried again with the same kind (next-task returns the held task, and
    the label sent for a task is always the same, so a resubmission is the same submission)."""

    def __init__(self, idx: int, token: str, port: int, project: int, stop: threading.Event,
                 deadline_box: list, counter: CycleBudget, *, kinds: Sequence[str] = ("ranking",),
                 timeout: float = 60.0, attempts: int = 2, retry_statuses: Sequence[int] = ()):
        super().__init__(name=f"labeler-{idx}", daemon=True)
        self.idx, self.token, self.project, self.kinds = idx, token, project, tuple(kinds)
        self.stop_event, self.deadline_box, self.budget = stop, deadline_box, counter
        self.client = Client(port, token, timeout=timeout, attempts=attempts, retry_statuses=retry_statuses)
        self.next_calls: list[Call] = []
        self.submit_calls: list[Call] = []
        self.cycles: list[tuple[float, float]] = []  # (start, end) of complete cycles
        self.handed: list[int] = []  # task ids received from next-task (200)
        self.submitted: list[tuple[int, int, int]] = []  # (ranking id, task id, status) for 200/201 submits
        self.demonstrated: list[tuple[int, int, int]] = []  # (demonstration id, task id, status), likewise
        self.drained_at: float | None = None
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001 - reported in the summary
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.client.close()

    def _loop(self) -> None:
        next_path = f"/api/projects/{self.project}/next-task/"
        turn = 0
        while not self.stop_event.is_set() and time.perf_counter() < self.deadline_box[0]:
            if not self.budget.take():
                return
            kind = self.kinds[turn % len(self.kinds)]
            t0 = time.perf_counter()
            status, data = self.client.post(next_path, {"kind": kind}, self.next_calls)
            if status == 204:
                self.drained_at = time.perf_counter()
                return
            if status != 200:
                time.sleep(0.05)  # 409 "queue busy" or a failure: ask again shortly
                continue
            task = json.loads(data)
            self.handed.append(task["id"])
            path, body = submission(self.idx, task)
            status, data = self.client.post(path, body, self.submit_calls)
            if status in (200, 201):
                label = json.loads(data)
                (self.demonstrated if kind == "demonstration" else self.submitted).append(
                    (label["id"], label["task"], status))
                self.cycles.append((t0, time.perf_counter()))
                turn += 1
            else:
                time.sleep(0.05)


class CycleBudget:
    def __init__(self, limit: int | None):
        self.left = limit
        self.lock = threading.Lock()

    def take(self) -> bool:
        if self.left is None:
            return True
        with self.lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True


# --------------------------------------------------------------------------------------------------
# Numbers.
# --------------------------------------------------------------------------------------------------


def pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    idx = min(len(sorted_values) - 1, max(0, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[idx]


def latency_summary(calls: list[Call], since: float) -> dict:
    ms = sorted(d * 1000 for t, d, s in calls if t >= since and isinstance(s, int))
    r = lambda v: None if v is None else round(v, 1)  # noqa: E731
    return {"n": len(ms), "p50_ms": r(pct(ms, 50)), "p95_ms": r(pct(ms, 95)), "p99_ms": r(pct(ms, 99)),
            "max_ms": r(ms[-1] if ms else None), "mean_ms": r(statistics.fmean(ms) if ms else None)}


def status_counts(calls: list[Call]) -> dict:
    return {str(k): v for k, v in sorted(Counter(s for _, _, s in calls).items(), key=lambda kv: str(kv[0]))}


# --------------------------------------------------------------------------------------------------
# Checks after a run.
# --------------------------------------------------------------------------------------------------

# Each kind of label: its table, the column naming who gave it, and where a Labeler keeps its acks.
LABEL_TABLES = {"ranking": ("annotation_ranking", "labeler_id", "submitted"),
                "demonstration": ("annotation_demonstration", "author_id", "demonstrated")}


def integrity_checks(db, project: int, labelers: list[Labeler], user_of_token: dict[str, int]) -> dict:
    """Every number under ``ok`` must be 0: no task over its overlap, no slot or label twice, no label
    without its slot, its entries or its first revision, and every acknowledged submission in the database
    exactly once (and nothing there that no labeler was told about). ``db``: a psycopg connection."""
    q = lambda sql, *a: db.execute(sql, a).fetchall()  # noqa: E731
    problems: Counter = Counter()
    db_labels: dict[str, dict[int, tuple[int, int]]] = {}
    for kind, (table, who, _) in LABEL_TABLES.items():
        problems["tasks_over_target_overlap"] += len(q(f"""
            SELECT t.id FROM annotation_task t JOIN {table} l ON l.task_id = t.id WHERE t.project_id = %s
            GROUP BY t.id HAVING count(l.id) > t.target_overlap""", project))
        problems["duplicate_task_labeler_labels"] += len(q(f"""
            SELECT l.task_id, l.{who} FROM {table} l JOIN annotation_task t ON t.id = l.task_id
            WHERE t.project_id = %s GROUP BY l.task_id, l.{who} HAVING count(*) > 1""", project))
        problems["labels_not_matching_their_slot"] += len(q(f"""
            SELECT l.id FROM {table} l JOIN annotation_taskslot s ON s.id = l.slot_id
            JOIN annotation_task t ON t.id = l.task_id
            WHERE t.project_id = %s AND (s.task_id <> l.task_id OR s.labeler_id IS DISTINCT FROM l.{who}
                                        OR s.status <> 'done')""", project))
        problems["labels_without_exactly_one_revision"] += len(q(f"""
            SELECT l.id FROM {table} l JOIN annotation_task t ON t.id = l.task_id
            LEFT JOIN annotation_labelrevision v ON v.{kind}_id = l.id
            WHERE t.project_id = %s GROUP BY l.id HAVING count(v.id) <> 1 OR min(v.number) <> 1""", project))
        db_labels[kind] = {row[0]: (row[1], row[2]) for row in q(f"""
            SELECT l.id, l.task_id, l.{who} FROM {table} l JOIN annotation_task t ON t.id = l.task_id
            WHERE t.project_id = %s""", project)}
    problems["duplicate_task_labeler_slots"] = len(q("""
        SELECT task_id, labeler_id FROM annotation_taskslot WHERE project_id = %s
        AND labeler_id IS NOT NULL GROUP BY task_id, labeler_id HAVING count(*) > 1""", project))
    problems["tasks_with_inconsistent_done_count"] = len(q("""
        SELECT t.id FROM annotation_task t
        LEFT JOIN (SELECT task_id, count(*) n FROM (SELECT task_id FROM annotation_ranking UNION ALL
                                                    SELECT task_id FROM annotation_demonstration) x
                   GROUP BY task_id) l ON l.task_id = t.id
        LEFT JOIN (SELECT task_id, count(*) n FROM annotation_taskslot WHERE status = 'done' GROUP BY task_id) s
          ON s.task_id = t.id
        WHERE t.project_id = %s AND (
          t.done_count <> coalesce(l.n, 0) OR t.done_count <> coalesce(s.n, 0)
          OR (t.status = 'complete') <> (t.done_count >= t.target_overlap))""", project))
    problems["rankings_without_k_entries"] = len(q("""
        SELECT r.id FROM annotation_ranking r JOIN annotation_task t ON t.id = r.task_id
        JOIN annotation_project p ON p.id = t.project_id LEFT JOIN annotation_rankingentry e ON e.ranking_id = r.id
        WHERE t.project_id = %s GROUP BY r.id, p.k HAVING count(e.id) <> p.k""", project))
    targets = dict(q("SELECT id, target_overlap FROM annotation_task WHERE project_id = %s", project))

    # Client side: which labelers received each task, and which submissions were acknowledged.
    handed_to = defaultdict(set)
    for lab in labelers:
        for task_id in lab.handed:
            handed_to[task_id].add(user_of_token[lab.token])
    problems["tasks_handed_to_more_labelers_than_overlap"] = sum(
        len(users) > targets.get(task, 1) for task, users in handed_to.items())
    acked_201 = 0
    for kind, (_, _, attr) in LABEL_TABLES.items():
        acked = {}
        for lab in labelers:
            for label_id, task_id, status in getattr(lab, attr):
                acked_201 += status == 201
                problems["submits_acknowledged_twice"] += label_id in acked
                acked[label_id] = (task_id, user_of_token[lab.token])
        problems["acknowledged_submits_missing_or_wrong_in_db"] += sum(
            db_labels[kind].get(label_id) != who for label_id, who in acked.items())
        problems["labels_in_db_never_acknowledged"] += sum(label_id not in acked for label_id in db_labels[kind])
    checks = {name: problems[name] for name in (
        "tasks_over_target_overlap", "duplicate_task_labeler_labels", "duplicate_task_labeler_slots",
        "labels_not_matching_their_slot", "tasks_with_inconsistent_done_count", "rankings_without_k_entries",
        "labels_without_exactly_one_revision", "tasks_handed_to_more_labelers_than_overlap",
        "acknowledged_submits_missing_or_wrong_in_db", "labels_in_db_never_acknowledged",
        "submits_acknowledged_twice")}
    return {
        "ok": all(v == 0 for v in checks.values()),
        **checks,
        "submits_201": acked_201,
        "rankings_in_db": len(db_labels["ranking"]),
        "demonstrations_in_db": len(db_labels["demonstration"]),
        "tasks_handed_out": len(handed_to),
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_seed":
        seed_main(sys.argv[2:])
    else:
        sys.exit(f"usage: {sys.argv[0]} _seed --name N --tasks T --labelers L [--overlap O] [--demonstrations D]")
