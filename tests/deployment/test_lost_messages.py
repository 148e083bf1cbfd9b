"""A Redis restart that loses the broker's data loses no job: the job rows are the truth, and
``requeue_lost_jobs`` sends a new message for every queued job the broker no longer holds. The last test
restarts a real Redis of its own (the suite's, which other tests' workers use, is left alone)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from celery import Celery
from django.utils import timezone

from annotation.loop import broker
from annotation.loop.rounds import RUN_TRAINING_JOB
from annotation.models import TrainingJob
from bench.harness import free_port
from tests.factories import make_project


@pytest.fixture
def broker_url(redis_url, settings, monkeypatch):
    url = redis_url.rsplit("/", 1)[0] + "/9"  # a database of its own: other tests' workers never read it
    monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery lets this variable override an app's broker
    client = redis.Redis.from_url(url)
    client.flushdb()
    settings.CELERY_BROKER_URL = url
    yield url
    client.flushdb()


def send(url: str, job_id: int) -> None:
    """What rounds.enqueue sends, through a real Celery producer (an app of its own: never the current
    app, which other tests' tasks use; its broker is this test's Redis database)."""
    app = Celery("sender", broker=url, set_as_current=False)
    with app.connection_for_write(url) as connection:
        app.send_task(RUN_TRAINING_JOB, args=[job_id], queue="training", connection=connection)


def queued_job(project, minutes_ago: float) -> TrainingJob:
    job = TrainingJob.objects.create(project=project, stage="sft", config={})
    TrainingJob.objects.filter(pk=job.pk).update(created=timezone.now() - timedelta(minutes=minutes_ago))
    return job


def test_the_broker_is_read_for_waiting_and_unacknowledged_messages(broker_url):
    send(broker_url, 41)
    send(broker_url, 42)
    client = redis.Redis.from_url(broker_url)
    delivered = client.rpop("training")  # as a worker takes a message with acks_late: it moves to "unacked"
    client.hset("unacked", "tag-1", b'[' + delivered + b', "", "training"]')
    assert broker.job_ids_in_broker() == {41, 42}


def test_queued_jobs_whose_message_vanished_are_sent_again_and_only_those(db, broker_url, monkeypatch):
    project = make_project("P")
    kept, lost, fresh = queued_job(project, 5), queued_job(project, 5), queued_job(project, 0)
    running = queued_job(project, 5)
    TrainingJob.objects.filter(pk=running.pk).update(status=TrainingJob.Status.RUNNING)
    send(broker_url, kept.pk)
    sent = []
    monkeypatch.setattr(broker, "enqueue", lambda job: (sent.append(job.pk), send(broker_url, job.pk)))
    assert broker.requeue_lost_jobs() == [lost.pk] and sent == [lost.pk]  # not the one just created
    assert broker.job_ids_in_broker() == {kept.pk, lost.pk}
    assert broker.requeue_lost_jobs() == []  # its message is there now: nothing is sent twice
    assert fresh.pk not in sent


def test_another_broker_is_left_alone(db, settings):
    settings.CELERY_BROKER_URL = "memory://"
    assert broker.job_ids_in_broker() is None and broker.requeue_lost_jobs() == []


class OwnRedis:
    """redis-server on loopback, without persistence: a restart loses every message, as a container
    restarted without its volume (or a failover to an empty replica) does."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.pidfile = folder / "redis.pid"

    def start(self) -> None:
        subprocess.run(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                        "--appendonly", "no", "--daemonize", "yes", "--pidfile", str(self.pidfile),
                        "--logfile", str(self.folder / "redis.log"), "--dir", str(self.folder)],
                       check=True, stdout=subprocess.DEVNULL)
        self._wait(self._answers, "answer")

    def stop(self) -> None:
        os.kill(int(self.pidfile.read_text()), signal.SIGTERM)
        self._wait(lambda: not self.pidfile.exists() and not self._answers(), "shut down")

    def restart(self) -> None:
        self.stop()
        self.start()

    def _answers(self) -> bool:
        try:
            return redis.Redis.from_url(self.url, socket_timeout=1).ping()
        except redis.ConnectionError:
            return False

    def _wait(self, condition, what: str) -> None:
        deadline = time.monotonic() + 20
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"Redis on port {self.port} did not {what} in 20 s: "
                            f"{(self.folder / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)


@pytest.fixture
def own_redis(tmp_path, settings, monkeypatch):
    server = OwnRedis(tmp_path)
    server.start()
    monkeypatch.setenv("CELERY_BROKER_URL", server.url)
    settings.CELERY_BROKER_URL = server.url
    yield server
    server.stop()


def test_jobs_queued_before_a_real_redis_restart_are_sent_again_after_it(db, own_redis, monkeypatch):
    project = make_project("P")
    jobs = {queued_job(project, 5).pk for _ in range(3)}
    for job_id in sorted(jobs):
        send(own_redis.url, job_id)
    assert broker.job_ids_in_broker() == jobs and broker.requeue_lost_jobs() == []  # all there: nothing sent

    own_redis.restart()
    assert broker.job_ids_in_broker() == set()  # the restart lost every message; the rows are still queued
    sent = []
    monkeypatch.setattr(broker, "enqueue", lambda job: (sent.append(job.pk), send(own_redis.url, job.pk)))
    assert broker.requeue_lost_jobs() == sorted(jobs) == sent
    assert broker.job_ids_in_broker() == jobs
    assert set(TrainingJob.objects.filter(status=TrainingJob.Status.QUEUED).values_list("pk", flat=True)) == jobs
