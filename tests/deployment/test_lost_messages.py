"""A Redis restart that loses the broker's data loses no job: the job rows are the truth, and
``requeue_lost_jobs`` sends a new message for every queued job the broker no longer holds."""
from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from celery import Celery
from django.utils import timezone

from annotation.loop import broker
from annotation.loop.rounds import RUN_TRAINING_JOB
from annotation.models import TrainingJob
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
