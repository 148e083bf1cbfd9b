"""Celery tasks: options plus one call. Heavy imports stay inside the functions so the web process
never loads torch."""
from __future__ import annotations

import platform
import socket
import sysconfig

from celery import shared_task


@shared_task(name="annotation.tasks.health")
def health() -> dict:
    """Proves a worker is up, reaches the database, and uses the standard library's ``platform``."""
    from django.db import connection

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
    from . import services

    return services.expire_leases()


@shared_task(bind=True, name="annotation.tasks.run_training_job", acks_late=True, reject_on_worker_lost=True,
             max_retries=None)
def run_training_job(self, job_id: int) -> str:
    """One training stage. Claimed atomically, so a duplicate delivery does nothing; a delivery after the
    worker died resumes the job from its checkpoint. A job held by a worker whose heartbeat is still
    fresh is looked at again once it could have gone stale. A failed stage is not retried automatically:
    it waits for an admin's retry."""
    from .jobs import BUSY, run_job, stale_after

    status = run_job(job_id)
    if status == BUSY:
        raise self.retry(countdown=stale_after() + 1)
    return status
