"""Running one TrainingJob inside a Celery worker: claim it atomically, keep its heartbeat, call the
training library's stage with a progress callback that throttles database writes, record the outcome;
and the sweep that settles jobs whose worker died.

The heartbeat is the truth about a worker: a running job whose heartbeat is older than
``TRAINING_JOB_STALE_SECONDS`` has lost its worker. The sweep (Celery beat, every
``TRAINING_JOB_SWEEP_SECONDS``) queues it again, to resume from its checkpoint, until it has used its
``max_attempts``; then it fails with "worker died N times". The broker's visibility timeout only backs
this up.

A job's ``attempts`` is the fencing token of the worker that claimed it: every write a running job makes
is conditioned on it, so a worker that was taken for dead (its job requeued, cancelled or failed) can no
longer change the row, and stops at its next step.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import F, Q
from django.utils import timezone

from ..models import TrainingJob
from . import rounds
from .stages import run_stage

MAX_HISTORY = 2000
LOG_LINES = 200
Status = TrainingJob.Status


def job_dir(job: TrainingJob) -> Path:
    return Path(settings.ARTIFACT_ROOT) / "projects" / str(job.project_id) / "jobs" / f"{job.pk}-{job.stage}"


def claim_job(job_id: int, host: str, pid: int | None = None) -> TrainingJob | None:
    """Mark the job running for this worker, or return None when it is not this worker's to run.

    A queued job is claimed; so is a running one whose worker died (stale heartbeat) while it has
    attempts left. A duplicate delivery while the job's worker lives claims nothing."""
    now = timezone.now()
    dead = TrainingJob.objects.stale(now).filter(attempts__lt=F("max_attempts"))
    updated = TrainingJob.objects.filter(Q(status=Status.QUEUED) | Q(pk__in=dead), pk=job_id,
                                         cancel_requested=False).update(
        status=Status.RUNNING, worker_host=host, worker_pid=pid, heartbeat=now, attempts=F("attempts") + 1,
        started=now, finished=None, error="",
    )
    if updated != 1:
        return None  # Nothing got updated: another worker got there first, or the job is not runnable.
    return TrainingJob.objects.select_related("project", "round", "snapshot").get(pk=job_id)


def _append_log(text: str, line: str) -> str:
    return "\n".join(((text or "").splitlines() + [f"{timezone.now():%H:%M:%S} {line}"])[-LOG_LINES:])


def settle_dead_job(job: TrainingJob) -> str | None:
    """Settle a running job whose worker died: cancelled if an admin asked for that, failed once it has
    used its attempts, else queued again with a new message. Returns the new status, or None when the row
    changed meanwhile (a worker claimed it first: it wins)."""
    now = timezone.now()
    if job.cancel_requested:
        status, error, line = Status.CANCELLED, "", "cancelled: its worker had died"
    elif job.attempts >= job.max_attempts:
        error = (f"worker died {job.attempts} times (last on {job.worker_host or 'an unknown host'}); "
                 "a stage killed every time it runs is usually out of memory: retry it with smaller settings")
        status, line = Status.FAILED, error
    else:
        status, error, line = Status.QUEUED, "", f"worker on {job.worker_host} stopped sending heartbeats; queued again"
    fields = {"status": status, "error": error, "log_tail": _append_log(job.log_tail, line), "eta_seconds": None}
    if status != Status.QUEUED:
        fields["finished"] = now
    # Conditional on the row as it was read: a worker that claimed the job meanwhile wins.
    same = TrainingJob.objects.filter(pk=job.pk, status=Status.RUNNING, attempts=job.attempts, heartbeat=job.heartbeat)
    if same.update(**fields) != 1:
        return None
    if status == Status.QUEUED:
        rounds.enqueue(job)
    else:
        rounds.on_job_finished(job.pk)
    return status


def sweep_dead_jobs() -> dict[str, list[int]]:
    """Settle every running job whose heartbeat went stale, so nothing stays RUNNING without a live
    worker. Run periodically by Celery beat."""
    settled: dict[str, list[int]] = {}
    for job in TrainingJob.objects.stale():
        status = settle_dead_job(job)
        if status is not None:
            settled.setdefault(status, []).append(job.pk)
    return settled


class JobProgress:
    """The stage's ``on_log`` and ``should_stop``: keeps progress in memory and writes it to the job row
    at most every ``interval`` seconds (and on the last step); reads the cancel flag at most every
    second. Writes only while the job is still this worker's (its attempt); once it is not, the stage is
    told to stop."""

    def __init__(self, job: TrainingJob, interval: float = 2.0):
        self.job_id, self.attempt, self.interval = job.pk, job.attempts, interval
        self.history: list[dict] = list(job.history or [])
        self.log_text = job.log_tail or ""
        self.step, self.total, self.metrics = job.step, job.total, dict(job.metrics or {})
        self.started, self.first_step = time.monotonic(), None
        self.last_write = self.last_check = 0.0
        self.stop = False

    def mine(self):
        return TrainingJob.objects.filter(pk=self.job_id, status=Status.RUNNING, attempts=self.attempt)

    def log(self, line: str) -> None:
        self.log_text = _append_log(self.log_text, line)

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
        written = self.mine().update(
            step=self.step, total=self.total, eta_seconds=self.eta(), metrics=self.metrics, history=self.history,
            log_tail=self.log_text, heartbeat=timezone.now(),
        )
        self.stop = self.stop or written != 1  # the job was taken from this worker
        self.last_write = time.monotonic()

    def should_stop(self) -> bool:
        if not self.stop and time.monotonic() - self.last_check >= 1.0:
            self.stop = not self.mine().filter(cancel_requested=False).exists()
            self.last_check = time.monotonic()
        return self.stop


class Heartbeat(threading.Thread):
    """Touches the job's heartbeat while a long step runs, so a live job never looks stale."""

    def __init__(self, progress: JobProgress):
        super().__init__(daemon=True)
        self.progress, self.done = progress, threading.Event()

    def run(self) -> None:
        try:
            while not self.done.wait(max(settings.TRAINING_JOB_STALE_SECONDS / 4, 0.5)):
                self.progress.mine().update(heartbeat=timezone.now())
        finally:
            connection.close()


def run_job(job_id: int) -> str:
    """Claim and run a job to its end; returns its final status, or "skipped" when it was not this
    delivery's to run (finished, cancelled, or alive on another worker)."""
    close_old_connections()
    job = claim_job(job_id, socket.gethostname(), os.getpid())
    if job is None:
        # A dead job that may not be claimed (cancel requested, or out of attempts) is settled now
        # rather than at the next sweep.
        for dead in TrainingJob.objects.stale().filter(pk=job_id):
            settle_dead_job(dead)
        return "skipped"
    progress = JobProgress(job)
    out = job_dir(job)
    note = "; resuming from its checkpoint" if (out / "checkpoints").exists() else ""
    progress.log(f"attempt {job.attempts} of {job.max_attempts} on {job.worker_host} (pid {job.worker_pid}){note}")
    progress.flush()
    TrainingJob.objects.filter(pk=job.pk).update(output_dir=str(out))
    beat = Heartbeat(progress)
    beat.start()
    try:
        outcome = run_stage(job, out, progress, threads=settings.TRAINING_THREADS)
    except Exception:
        progress.log("failed")
        progress.flush()
        status, fields = Status.FAILED, {"error": traceback.format_exc()}
    else:
        progress.flush()
        status = Status.SUCCEEDED if outcome.status == "completed" else Status.CANCELLED
        fields = {"metrics": {**progress.metrics, **_numbers(outcome.summary)}, "result_model": outcome.model_version}
    finally:
        beat.done.set()
        beat.join(timeout=5)
    if progress.mine().update(status=status, finished=timezone.now(), eta_seconds=0, **fields) == 1:
        rounds.on_job_finished(job.pk)
    return status


def _numbers(summary: dict) -> dict[str, float]:
    return {f"summary/{k}": v for k, v in summary.items() if isinstance(v, (int, float))}

