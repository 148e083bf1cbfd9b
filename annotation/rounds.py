"""Training rounds and jobs: every write that starts, advances, cancels or retries them.

A round trains on the labels collected so far, in InstructGPT's order:
snapshot → SFT → RM → PPO → generate k candidates per next-round prompt → next round's ranking tasks.
Each stage is one TrainingJob on the ``training`` queue; when a job succeeds, ``on_job_finished`` (run by
the worker) enqueues the next one, so a failed stage can be retried without redoing finished ones.
"""
from __future__ import annotations

import copy
from typing import Any

from django.db import transaction
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from .models import DatasetSnapshot, JobStage, ModelVersion, Project, Round, TrainingJob
from .services import Conflict
from .snapshots import create_snapshot

PIPELINE = (JobStage.SFT, JobStage.RM, JobStage.PPO, JobStage.GENERATE)

# Sized for a laptop CPU and the offline tiny base: a demo round takes minutes.
DEFAULT_ROUND_CONFIG: dict[str, dict[str, Any]] = {
    "sft": {"max_steps": 60, "batch_size": 8, "learning_rate": 3e-4, "warmup_steps": 5, "max_length": 256,
            "log_every": 5},
    "rm": {"max_steps": 60, "batch_size": 4, "learning_rate": 1e-4, "warmup_steps": 5, "max_length": 256,
           "log_every": 5},
    "ppo": {"iterations": 12, "batch_size": 8, "minibatch_size": 4, "ppo_epochs": 2, "max_new_tokens": 24,
            "max_prompt_length": 128, "learning_rate": 2e-5, "critic_learning_rate": 5e-5, "kl_coef": 0.05,
            "sample_every": 4,
            "checkpoint_every": 4},
    "generate": {"prompts": 20, "models": ["ppo"], "batch_size": 16},
}


def _config_classes():
    from training.config import GenerateConfig, PPOConfig, RewardConfig, SFTConfig  # no torch: safe on the web

    return {"sft": (SFTConfig, {"base": "-"}), "rm": (RewardConfig, {"base": "-"}),
            "ppo": (PPOConfig, {"policy": "-"}), "generate": (GenerateConfig, {"model": "-"})}


def validate_round_config(overrides: dict | None) -> dict[str, dict[str, Any]]:
    """Defaults merged with ``overrides`` ({stage: {field: value}}), each stage checked by building its
    config dataclass. Raises ValidationError {"config": {stage: [message]}} listing every problem."""
    overrides = overrides or {}
    if not isinstance(overrides, dict):
        raise ValidationError({"config": ["must be an object of stage → settings"]})
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(overrides) - set(DEFAULT_ROUND_CONFIG))
    if unknown:
        errors["non_field_errors"] = [f"unknown stage(s): {', '.join(unknown)}; use {', '.join(DEFAULT_ROUND_CONFIG)}"]
    merged = copy.deepcopy(DEFAULT_ROUND_CONFIG)
    for stage, classes in _config_classes().items():
        given = overrides.get(stage, {})
        if not isinstance(given, dict):
            errors[stage] = ["must be an object of settings"]
            continue
        merged[stage].update(given)
        fields = {k: v for k, v in merged[stage].items() if k not in ("prompts", "models")}
        cls, placeholders = classes
        try:
            cls.from_dict({**fields, **placeholders})
        except (TypeError, ValueError) as exc:
            errors[stage] = [str(exc)]
    generate = merged["generate"]
    if not isinstance(generate.get("prompts"), int) or generate["prompts"] < 1:
        errors.setdefault("generate", []).append("prompts must be a positive integer")
    models = generate.get("models")
    if not isinstance(models, list) or not models or not set(models) <= {"ppo", "sft"}:
        errors.setdefault("generate", []).append('models must be a non-empty list drawn from "ppo" and "sft"')
    if errors:
        raise ValidationError({"config": errors})
    return merged


def _enqueue(job: TrainingJob) -> None:
    from .tasks import run_training_job

    transaction.on_commit(lambda: run_training_job.apply_async(args=[job.pk], queue="training"))


def create_job(*, project: Project, stage: str, config: dict, round: Round | None = None,
               snapshot: DatasetSnapshot | None = None, inputs: list[ModelVersion] = ()) -> TrainingJob:
    """A queued job, sent to the training queue once the transaction commits."""
    job = TrainingJob.objects.create(project=project, round=round, stage=stage, config=config, snapshot=snapshot)
    job.input_models.set(inputs)
    _enqueue(job)
    return job


def current_round(project: Project) -> Round:
    """The round whose labels are being collected (round 1 holds the imported tasks)."""
    latest = project.rounds.order_by("-number").first()
    if latest is None:
        return Round.objects.create(project=project, number=1)
    return latest


def next_round(round: Round) -> Round:
    nxt, _ = Round.objects.get_or_create(project=round.project, number=round.number + 1)
    return nxt


def latest_model(project: Project, stage: str) -> ModelVersion | None:
    return ModelVersion.objects.filter(project=project, stage=stage).order_by("-id").first()


@transaction.atomic
def start_round(*, project: Project, config: dict | None = None) -> Round:
    """Snapshot the labels collected so far and start the round's SFT job.

    Locks the project row, so two admins starting a round at once start one."""
    Project.objects.select_for_update().get(pk=project.pk)
    merged = validate_round_config(config)
    round = current_round(project)
    if round.status == Round.Status.TRAINING:
        raise Conflict(f"Round {round.number} is already training.")
    if round.status in (Round.Status.FINISHED,):
        round = next_round(round)
    start_from = latest_model(project, ModelVersion.Stage.SFT) or project.base_model
    if start_from is None:
        raise ValidationError({"project": ["the project has no base model to start SFT from"]})
    snapshot = create_snapshot(project=project, round=round)
    missing = [name for name in ("sft.jsonl", "rankings.jsonl", "ppo_prompts.jsonl")
               if snapshot.files[name]["records"] == 0]
    if missing:
        raise ValidationError({"snapshot": [f"no usable labels for {', '.join(missing)} yet: collect some first"]})
    round.status, round.config, round.started, round.finished = Round.Status.TRAINING, merged, timezone.now(), None
    round.save()
    create_job(project=project, stage=JobStage.SFT, config=merged["sft"], round=round, snapshot=snapshot,
               inputs=[start_from])
    return round


def on_job_finished(job_id: int) -> None:
    """Advance the job's round: enqueue the next stage, or mark the round finished or failed."""
    with transaction.atomic():
        job = TrainingJob.objects.select_related("round", "project").get(pk=job_id)
        round = Round.objects.select_for_update().get(pk=job.round_id) if job.round_id else None
        if round is None or round.status != Round.Status.TRAINING:
            return
        if job.status == TrainingJob.Status.FAILED:
            Round.objects.filter(pk=round.pk).update(status=Round.Status.FAILED)
            return
        if job.status == TrainingJob.Status.CANCELLED:
            Round.objects.filter(pk=round.pk).update(status=Round.Status.CANCELLED, finished=timezone.now())
            return
        _advance(job, round)


def _advance(job: TrainingJob, round: Round) -> None:
    stage_config = round.config or validate_round_config(None)
    produced = job.result_model
    base = dict(project=job.project, round=round, snapshot=job.snapshot)
    if job.stage == JobStage.SFT:
        create_job(stage=JobStage.RM, config=stage_config["rm"], inputs=[produced], **base)
    elif job.stage == JobStage.RM:
        sft = job.input_models.get(stage=ModelVersion.Stage.SFT)
        create_job(stage=JobStage.PPO, config=stage_config["ppo"], inputs=[sft, produced], **base)
    elif job.stage == JobStage.PPO:
        Project.objects.filter(pk=job.project_id).update(active_policy=produced)
        sft = job.input_models.get(stage=ModelVersion.Stage.SFT)
        generate = dict(stage_config["generate"])
        chosen = {"ppo": produced, "sft": sft}
        inputs = [chosen[name] for name in generate.pop("models")]
        create_job(stage=JobStage.GENERATE, config=generate, inputs=inputs, **base)
    elif job.stage == JobStage.GENERATE:
        Round.objects.filter(pk=round.pk).update(status=Round.Status.FINISHED, finished=timezone.now())


@transaction.atomic
def cancel_round(*, round: Round) -> Round:
    """Stop a training round: its running job stops at its next step; queued jobs never start."""
    if round.status != Round.Status.TRAINING:
        raise Conflict(f"Round {round.number} is not training.")
    for job in round.jobs.filter(status__in=[TrainingJob.Status.QUEUED, TrainingJob.Status.RUNNING]):
        cancel_job(job=job)
    Round.objects.filter(pk=round.pk).update(status=Round.Status.CANCELLED, finished=timezone.now())
    round.refresh_from_db()
    return round


def cancel_job(*, job: TrainingJob) -> None:
    """Ask a job to stop: a queued job is cancelled now; a running one stops at its next step."""
    TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.QUEUED).update(
        status=TrainingJob.Status.CANCELLED, cancel_requested=True, finished=timezone.now())
    TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.RUNNING).update(cancel_requested=True)


@transaction.atomic
def retry_job(*, job: TrainingJob) -> TrainingJob:
    """Queue a failed or cancelled job again; a round's finished stages are not redone. The job keeps its
    output directory, so a stage with a checkpoint resumes from it."""
    updated = TrainingJob.objects.filter(
        pk=job.pk, status__in=[TrainingJob.Status.FAILED, TrainingJob.Status.CANCELLED]
    ).update(status=TrainingJob.Status.QUEUED, cancel_requested=False, error="", finished=None)
    if updated != 1:
        raise Conflict("Only a failed or cancelled job can be retried.")
    if job.round_id:
        Round.objects.filter(pk=job.round_id).update(status=Round.Status.TRAINING, finished=None)
    _enqueue(job)
    job.refresh_from_db()
    return job


def start_stage(*, project: Project, stage: str, config: dict | None = None,
                inputs: list[ModelVersion] = ()) -> TrainingJob:
    """One stage on its own (outside a round), on a fresh snapshot of the project's labels."""
    if stage not in JobStage.values:
        raise ValidationError({"stage": [f"must be one of {', '.join(JobStage.values)}"]})
    snapshot = create_snapshot(project=project)
    return create_job(project=project, stage=stage, config=config or {}, snapshot=snapshot, inputs=list(inputs))
