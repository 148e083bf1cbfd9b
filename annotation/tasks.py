"""Celery entry points: task options plus one call. Nothing imports this module: code enqueues work by
task name (``annotation.loop.rounds.enqueue``); Celery finds these by autodiscovery.

Importing it never loads torch: the stage runners import the training library inside their functions.
"""
from __future__ import annotations

import platform
import socket
import sysconfig

from celery import shared_task
from django.db import connection

from . import services
from .loop import broker, worker


@shared_task(name="annotation.tasks.health")
def health() -> dict:
    """Proves a worker is up, reaches the database, and uses the standard library's ``platform``."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {
        "ok": True,
        "hostname": socket.gethostname(),
        "database": connection.vendor,
        "platform_system": platform.system(),
        "platform_is_stdlib": platform.__file__.startswith(sysconfig.get_paths()["stdlib"]),
    }


@shared_task(name="annotation.tasks.expire_leases", ignore_result=True)
def expire_leases() -> int:
    return services.expire_leases()


@shared_task(name="annotation.tasks.requeue_lost_jobs", ignore_result=True)
def requeue_lost_jobs() -> list[int]:
    """Queued jobs whose broker message vanished (a Redis restart) get a new one (Celery beat)."""
    return broker.requeue_lost_jobs()


@shared_task(name="annotation.tasks.purge_expired_tokens", ignore_result=True)
def purge_expired_tokens() -> int:
    """Delete expired API tokens (they are refused already; this keeps the table small)."""
    return services.purge_expired_tokens()


@shared_task(name="annotation.tasks.run_training_job", acks_late=True, reject_on_worker_lost=True)
def run_training_job(job_id: int) -> str:
    """One training stage. Claimed atomically, so a duplicate delivery does nothing; a delivery after the
    worker died resumes the job from its checkpoint. A failed stage is not retried automatically: it
    waits for an admin's retry. A job whose worker dies is found by ``sweep_dead_jobs``."""
    return worker.run_job(job_id)


@shared_task(name="annotation.tasks.sweep_dead_jobs", ignore_result=True)
def sweep_dead_jobs() -> dict:
    """Requeue, fail or cancel running jobs whose heartbeat went stale (Celery beat)."""
    return worker.sweep_dead_jobs()
