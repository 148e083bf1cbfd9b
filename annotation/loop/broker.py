"""The job rows are the truth; the broker's messages are only how workers hear of them. If Redis loses
its data (a restart without persistence, a flush, a failover), queued jobs would wait forever. So a
periodic task (``requeue_lost_jobs``, Celery beat) compares the two and sends a new message for every
queued job that has none, neither waiting in the training queue nor delivered and unacknowledged.
A duplicate delivery is harmless: claiming a job is an atomic UPDATE, so only one run starts.

Reading the queue relies on kombu's Redis layout (a list per queue and priority, and the ``unacked``
hash of delivered messages); with any other broker the check does nothing.
"""
from __future__ import annotations

import ast
import base64
import json
from datetime import timedelta

import redis
from django.conf import settings
from django.utils import timezone

from ..models import TrainingJob
from .rounds import RUN_TRAINING_JOB, enqueue

QUEUE = "training"


def _job_id(message: dict) -> int | None:
    headers = message.get("headers") or {}
    if headers.get("task") != RUN_TRAINING_JOB:
        return None
    if headers.get("argsrepr"):
        return int(ast.literal_eval(headers["argsrepr"])[0])
    args = json.loads(base64.b64decode(message["body"]))[0]
    return int(args[0])


def job_ids_in_broker() -> set[int] | None:
    """Ids of the jobs whose message the broker holds; None when the broker is not Redis."""
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://")):
        return None
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        raw = [item for key in client.scan_iter(match=f"{QUEUE}*") if client.type(key) == b"list"
               for item in client.lrange(key, 0, -1)]
        raw += [json.loads(item)[0] for item in client.hvals("unacked")]  # [message, exchange, routing key]
    finally:
        client.close()
    ids = set()
    for item in raw:
        message = json.loads(item) if isinstance(item, (bytes, str)) else item
        job_id = _job_id(message)
        if job_id is not None:
            ids.add(job_id)
    return ids


def requeue_lost_jobs(*, min_age_seconds: int = 60) -> list[int]:
    """Send a message again for every queued job (older than ``min_age_seconds``, so that one being
    enqueued right now is left alone) that the broker has no message for. Returns their ids."""
    present = job_ids_in_broker()
    if present is None:
        return []
    cutoff = timezone.now() - timedelta(seconds=min_age_seconds)
    lost = list(TrainingJob.objects.filter(status=TrainingJob.Status.QUEUED, created__lt=cutoff)
                .exclude(pk__in=present).order_by("id"))
    for job in lost:
        enqueue(job)
    return [job.pk for job in lost]
