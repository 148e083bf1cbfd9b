"""Real processes started the way production starts them: gunicorn with platform/gunicorn.conf.py and
a Celery worker on the default and training queues, both against the suite's Redis and database."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.harness import Gunicorn, Postgres, run_child

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def service_env(redis_url, tmp_path_factory) -> dict:
    env = {**os.environ, "CELERY_BROKER_URL": redis_url, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
    env.setdefault("VAR_DIR", str(tmp_path_factory.mktemp("var")))
    return env


@pytest.fixture(scope="session")
def web_server(service_env, tmp_path_factory):
    """gunicorn serving the real WSGI app (static files collected, as in production)."""
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT, env=service_env,
                   check=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=service_env,
                   check=True)
    port = free_port()
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    process = subprocess.Popen(
        [str(BIN / "gunicorn"), "-c", "platform/gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "--workers", "2",
         "rlhf_platform.wsgi"],
        cwd=ROOT, env=service_env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=2)
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"gunicorn exited:\n{log.read_text()}")
            time.sleep(0.3)
    else:
        stop(process)
        pytest.fail(f"gunicorn did not answer in 60 s:\n{log.read_text()}")
    yield url
    stop(process)


@pytest.fixture(scope="session")
def celery_worker(service_env, tmp_path_factory):
    """A real worker process consuming both queues; fails loudly if it does not come up."""
    from rlhf_platform.celery import app

    log = tmp_path_factory.mktemp("worker") / "worker.log"
    process = subprocess.Popen(
        [str(BIN / "celery"), "-A", "rlhf_platform", "worker", "-Q", "default,training", "-c", "2",
         "-n", f"test-{os.getpid()}@%h", "-l", "info"],
        cwd=ROOT, env=service_env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the Celery worker exited:\n{log.read_text()}")
        if app.control.ping(timeout=1.0):
            break
    else:
        stop(process)
        pytest.fail(f"the Celery worker did not answer in 90 s:\n{log.read_text()}")
    yield process
    stop(process)


@dataclass
class OwnPostgres:
    pg: Postgres
    env: dict  # for processes that use it: DATABASE_URL, VAR_DIR, …
    tmp: Path


@pytest.fixture(scope="session")
def own_postgres():
    """A PostgreSQL cluster of its own, migrated, for the load and fault tests: they fill it, kill the
    server processes that use it and restart it, and the suite's cluster is left alone."""
    tmp = Path(tempfile.mkdtemp(prefix="rlhf-own-pg-"))  # not under pytest's 0700 folder: postgres runs it
    pg = Postgres(tmp, free_port(), fast=True)
    try:
        pg.start()
        env = {**os.environ, "DATABASE_URL": pg.create_database("rlhf"), "VAR_DIR": str(tmp / "var"),
               "DEBUG": "false", "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
        env.pop("GUNICORN_ACCESSLOG", None)
        run_child(env, "manage.py", "migrate", "--noinput", "-v0", capture=False)
        yield OwnPostgres(pg, env, tmp)
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def start_gunicorn(own_postgres):
    """start_gunicorn(workers, threads) → gunicorn as production starts it (the app's own throttles), on
    ``own_postgres``; stopped after the test."""
    started: list[Gunicorn] = []

    def start(workers: int, threads: int) -> Gunicorn:
        server = Gunicorn(own_postgres.tmp, free_port(), own_postgres.env, workers, threads, "rlhf_platform.wsgi",
                          throttle_writes=None)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
