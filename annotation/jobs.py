"""Running one TrainingJob inside a Celery worker: claim it atomically, call the training library's stage
function with a progress callback that throttles database writes, and record the outcome.

Only the worker imports this module's stage runners (and so torch); the web process never does.
"""
from __future__ import annotations

import socket
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import F, Q
from django.utils import timezone

from .models import ModelVersion, TrainingJob

MAX_HISTORY = 2000
BUSY = "busy"
LOG_LINES = 200


def stale_after() -> float:
    return float(getattr(settings, "TRAINING_JOB_STALE_SECONDS", 120))


def job_dir(job: TrainingJob) -> Path:
    return Path(settings.ARTIFACT_ROOT) / "projects" / str(job.project_id) / "jobs" / f"{job.pk}-{job.stage}"


def claim_job(job_id: int, host: str) -> TrainingJob | None:
    """Mark the job running for this worker, or return None when another worker has it.

    A queued job is claimed; so is a running one whose heartbeat went stale (its worker died and the
    broker redelivered the message). A duplicate delivery while the job is alive claims nothing."""
    now = timezone.now()
    stale = now - timedelta(seconds=stale_after())
    claimable = Q(status=TrainingJob.Status.QUEUED) | Q(status=TrainingJob.Status.RUNNING, heartbeat__lt=stale)
    updated = TrainingJob.objects.filter(claimable, pk=job_id, cancel_requested=False).update(
        status=TrainingJob.Status.RUNNING, worker_host=host, heartbeat=now, attempts=F("attempts") + 1,
        started=now, finished=None, error="",
    )
    if updated != 1:
        return None  # Nothing got updated: another worker got there first, or the job is finished.
    return TrainingJob.objects.select_related("project", "round", "snapshot").get(pk=job_id)


class JobProgress:
    """The stage's ``on_log`` and ``should_stop``: keeps progress in memory and writes it to the job row
    at most every ``interval`` seconds (and on the last step); reads the cancel flag at most every
    second."""

    def __init__(self, job: TrainingJob, interval: float = 2.0):
        self.job_id, self.interval = job.pk, interval
        self.history: list[dict] = list(job.history or [])
        self.lines: list[str] = (job.log_tail or "").splitlines()[-LOG_LINES:]
        self.step, self.total, self.metrics = job.step, job.total, dict(job.metrics or {})
        self.started, self.first_step = time.monotonic(), None
        self.last_write = self.last_check = 0.0
        self.cancelled = False

    def log(self, line: str) -> None:
        self.lines = (self.lines + [f"{timezone.now():%H:%M:%S} {line}"])[-LOG_LINES:]

    def on_log(self, step: int, total: int, metrics: dict[str, float]) -> None:
        if self.first_step is None:
            self.first_step = step - 1
        self.step, self.total = step, total
        self.metrics = {k: round(float(v), 6) for k, v in metrics.items()}
        self.history.append({"step": step, **self.metrics})
        if len(self.history) > MAX_HISTORY:
            self.history = self.history[::2]
        shown = ", ".join(f"{k}={v:.4g}" for k, v in list(self.metrics.items())[:6])
        self.log(f"step {step}/{total} {shown}")
        if time.monotonic() - self.last_write >= self.interval or step >= total:
            self.flush()

    def eta(self) -> float | None:
        done = self.step - (self.first_step or 0)
        if done <= 0 or not self.total:
            return None
        return (time.monotonic() - self.started) / done * max(self.total - self.step, 0)

    def flush(self) -> None:
        TrainingJob.objects.filter(pk=self.job_id).update(
            step=self.step, total=self.total, eta_seconds=self.eta(), metrics=self.metrics, history=self.history,
            log_tail="\n".join(self.lines), heartbeat=timezone.now(),
        )
        self.last_write = time.monotonic()

    def should_stop(self) -> bool:
        if not self.cancelled and time.monotonic() - self.last_check >= 1.0:
            self.cancelled = TrainingJob.objects.filter(pk=self.job_id, cancel_requested=True).exists()
            self.last_check = time.monotonic()
        return self.cancelled


class Heartbeat(threading.Thread):
    """Touches the job's heartbeat while a long step runs, so a live job never looks stale."""

    def __init__(self, job_id: int):
        super().__init__(daemon=True)
        self.job_id, self.done = job_id, threading.Event()

    def run(self) -> None:
        try:
            while not self.done.wait(max(stale_after() / 4, 0.5)):
                TrainingJob.objects.filter(pk=self.job_id, status=TrainingJob.Status.RUNNING).update(
                    heartbeat=timezone.now())
        finally:
            connection.close()


def run_job(job_id: int) -> str:
    """Claim and run a job to its end; returns the final status, "skipped" when there is nothing to do, or
    ``BUSY`` when another worker holds it with a fresh heartbeat."""
    close_old_connections()
    job = claim_job(job_id, socket.gethostname())
    if job is None:
        # Running elsewhere with a fresh heartbeat: a duplicate delivery while it lives, or a redelivery
        # that came before the dead worker's heartbeat went stale. The caller looks again later.
        running = TrainingJob.objects.filter(pk=job_id, status=TrainingJob.Status.RUNNING).exists()
        return BUSY if running else "skipped"
    progress = JobProgress(job)
    out = job_dir(job)
    resuming = (out / "checkpoints").exists()
    note = "; resuming from its checkpoint" if resuming else ""
    progress.log(f"attempt {job.attempts} on {job.worker_host}{note}")
    progress.flush()
    TrainingJob.objects.filter(pk=job.pk).update(output_dir=str(out))
    beat = Heartbeat(job.pk)
    beat.start()
    try:
        from .stages import run_stage

        result = run_stage(job, out, progress)
    except Exception:
        progress.log("failed")
        progress.flush()
        _finish(job, TrainingJob.Status.FAILED, error=traceback.format_exc())
        from .rounds import on_job_finished

        on_job_finished(job.pk)
        return TrainingJob.Status.FAILED
    finally:
        beat.done.set()
        beat.join(timeout=5)
    progress.flush()
    status = TrainingJob.Status.SUCCEEDED if result.status == "completed" else TrainingJob.Status.CANCELLED
    _finish(job, status, metrics=progress.metrics, summary=result.summary, model=result.model_version)
    from .rounds import on_job_finished

    on_job_finished(job.pk)
    return status


def _finish(job: TrainingJob, status: str, *, error: str = "", metrics: dict | None = None,
            summary: dict | None = None, model: ModelVersion | None = None) -> None:
    fields = {"status": status, "finished": timezone.now(), "error": error, "eta_seconds": 0}
    if summary is not None:
        numbers = {f"summary/{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
        fields["metrics"] = {**(metrics or {}), **numbers}
    if model is not None:
        fields["result_model"] = model
    TrainingJob.objects.filter(pk=job.pk).update(**fields)

