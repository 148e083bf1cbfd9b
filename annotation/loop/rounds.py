"""Training rounds and jobs: every write that starts, advances, cancels or retries them.

A round trains on the labels collected so far along its path (``loop.config.PATHS``): InstructGPT's
snapshot → SFT → RM → PPO by default, or SFT → RM → RLOO, or SFT → DPO; then every path evaluates the new
policy on held-out prompts (the gate), generates k candidates per next-round prompt from the active policy
and makes the next round's ranking tasks. Each stage is one TrainingJob on the ``training`` queue; when a
job succeeds, ``on_job_finished`` (run by the worker) enqueues the next one, so a failed stage can be
retried without redoing finished ones.

Jobs are enqueued by Celery task name, so this module never imports ``annotation.tasks``.
"""
from __future__ import annotations

import math

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from ..errors import Conflict
from ..models import DatasetSnapshot, JobStage, ModelVersion, Project, Round, TrainingJob
from .config import DEFAULT_PATH, PATHS, validate_round_config
from .snapshots import count_best_ranked, create_snapshot, earlier_snapshots, new_sft_records

RUN_TRAINING_JOB = "annotation.tasks.run_training_job"


def enqueue(job: TrainingJob) -> None:
    """Send the job to the training queue once the transaction commits (never a job the database lost)."""
    message = current_app.signature(RUN_TRAINING_JOB, args=[job.pk], queue="training")
    transaction.on_commit(lambda: message.apply_async())


def create_job(*, project: Project, stage: str, config: dict, round: Round | None = None,
               snapshot: DatasetSnapshot | None = None, inputs: list[ModelVersion] = ()) -> TrainingJob:
    """A queued job, sent to the training queue once the transaction commits. A job of a round belongs to
    the round's current run (see ``TrainingJob.is_superseded``)."""
    job = TrainingJob.objects.create(
        project=project, round=round, stage=stage, config=config, snapshot=snapshot,
        round_run=round.run if round else 0, max_attempts=settings.TRAINING_JOB_MAX_ATTEMPTS)
    job.input_models.set(inputs)
    enqueue(job)
    return job


@transaction.atomic
def start_round(*, project: Project, config: dict | None = None) -> Round:
    """Snapshot the labels collected so far and start the round's SFT job, from the model its ``sft.init``
    names (``sft_start_model``). With ``sft.data: "new"`` the job trains only on the labels no earlier round's
    snapshot held (it gets those snapshots' ids); a round with nothing new to train on is refused, as one
    with an empty snapshot file is.

    Locks the project row, so two admins starting a round at once start one. Starting a round that
    failed or was cancelled begins a new run of it: jobs of the earlier run can no longer be retried."""
    project = Project.objects.select_for_update().get(pk=project.pk)  # and its active policy as of now
    merged = validate_round_config(config, default_preset=project.round_preset)
    round = Round.objects.current_for(project)
    if round.status == Round.Status.TRAINING:
        raise Conflict(f"Round {round.number} is already training.")
    if round.status == Round.Status.FINISHED:
        round = Round.objects.next_after(round)
    start_from = sft_start_model(project, merged["sft"]["init"])
    if start_from is None:
        raise ValidationError({"project": ["the project has no base model to start SFT from"]})
    snapshot = create_snapshot(project=project, round=round)
    missing = [name for name in ("sft.jsonl", "rankings.jsonl", "ppo_prompts.jsonl")
               if snapshot.files[name]["records"] == 0]
    if missing:
        raise ValidationError({"snapshot": [f"no usable labels for {', '.join(missing)} yet: collect some first"]})
    sft_config = dict(merged["sft"])
    if sft_config["data"] == "new":
        sft_config["exclude_snapshots"] = earlier_snapshots(project, round)
        _check_new_sft_data(snapshot, sft_config)
    round.status, round.config, round.started, round.finished = Round.Status.TRAINING, merged, timezone.now(), None
    round.run += 1
    round.save()
    create_job(project=project, stage=JobStage.SFT, config=sft_config, round=round, snapshot=snapshot,
               inputs=[start_from])
    return round


def sft_start_model(project: Project, init: str) -> ModelVersion | None:
    """The model a round's SFT starts from (``loop.config.SFT_INIT``): "policy", the project's active policy
    (the best model so far), else its latest SFT model, else the base; "sft", the latest SFT model, else the
    base; "base", the base. In round 1 all three are the base."""
    latest_sft = ModelVersion.objects.latest_for(project, ModelVersion.Stage.SFT)
    if init == "policy":
        return project.active_policy or latest_sft or project.base_model
    if init == "sft":
        return latest_sft or project.base_model
    return project.base_model


def _check_new_sft_data(snapshot: DatasetSnapshot, sft_config: dict) -> None:
    """Refuse a round whose SFT (``data: "new"``) would have nothing to train on: no new demonstration of a
    train prompt, and no new ranking with a best-ranked response (or ``best_ranked`` off)."""
    demos, rankings = new_sft_records(snapshot, sft_config["exclude_snapshots"])
    best = count_best_ranked(rankings) if sft_config.get("best_ranked") else 0
    if demos or best:
        return
    usable = "" if sft_config.get("best_ranked") else " (best_ranked is off, so rankings add none)"
    raise ValidationError({"snapshot": [
        f"nothing new for SFT to train on since the earlier rounds: no new demonstration and no new ranking "
        f"with a single best response{usable}. Collect new labels first, or start with "
        f'{{"sft": {{"data": "all"}}}}']})


def on_job_finished(job_id: int) -> None:
    """Advance the job's round: enqueue the next stage, or mark the round finished, failed or cancelled.
    A job of an earlier run of its round (superseded) changes nothing. Locks the round row."""
    with transaction.atomic():
        job = TrainingJob.objects.select_related("project").get(pk=job_id)
        round = Round.objects.select_for_update().filter(pk=job.round_id).first()
        if round is None or round.status != Round.Status.TRAINING or round.run != job.round_run:
            return
        if job.status == TrainingJob.Status.FAILED:
            Round.objects.filter(pk=round.pk).update(status=Round.Status.FAILED)
        elif job.status == TrainingJob.Status.CANCELLED:
            Round.objects.filter(pk=round.pk).update(status=Round.Status.CANCELLED, finished=timezone.now())
        elif job.status == TrainingJob.Status.SUCCEEDED:
            _advance(job, round)


def _advance(job: TrainingJob, round: Round) -> None:
    stage_config = round.config or validate_round_config(None)
    path = stage_config.get("path", DEFAULT_PATH)
    produced = job.result_model
    base = dict(project=job.project, round=round, snapshot=job.snapshot)
    if job.stage == JobStage.SFT:
        after_sft = PATHS[path][1]  # the RM, or DPO straight from the rankings
        create_job(stage=after_sft, config=stage_config[after_sft], inputs=[produced], **base)
    elif job.stage == JobStage.RM:
        sft = job.input_models.get(stage=ModelVersion.Stage.SFT)
        create_job(stage=path, config=stage_config[path], inputs=[sft, produced], **base)
    elif job.stage in (JobStage.PPO, JobStage.RLOO, JobStage.DPO):
        sft = job.input_models.get(stage=ModelVersion.Stage.SFT)
        # DPO's path trains no RM: the evaluation scores with the project's latest one (an earlier round's), if
        # any, beside the judge.
        rm = job.input_models.filter(stage=ModelVersion.Stage.RM).first() or \
            ModelVersion.objects.latest_for(job.project, ModelVersion.Stage.RM)
        previous = job.project.active_policy
        roles = {job.stage: produced.pk, "sft": sft.pk, "rm": rm.pk if rm else None,
                 "previous": previous.pk if previous else None}
        create_job(stage=JobStage.EVALUATE, config={**stage_config["evaluate"], "models": roles},
                   inputs=[m for m in (produced, sft, rm, previous) if m is not None], **base)
    elif job.stage == JobStage.EVALUATE:
        roles = {name: ModelVersion.objects.filter(pk=pk).first() if pk else None
                 for name, pk in job.config["models"].items()}
        kept, note = gate_decision(job.metrics, gate=stage_config.get("gate", True), previous=roles["previous"],
                                   sft=roles["sft"], policy=path, scorer=_scorer_name(path, roles["rm"]))
        policy = {"new": roles[path], "sft": roles["sft"], "previous": roles["previous"]}[kept]
        if policy != roles["previous"]:
            Project.objects.filter(pk=job.project_id).update(active_policy=policy)
        comparison = {k.removeprefix("summary/"): v for k, v in job.metrics.items() if k.startswith("summary/")}
        Round.objects.filter(pk=round.pk).update(comparison=comparison, gate_note=note)
        generate = dict(stage_config["generate"])
        chosen = {"policy": policy, path: policy, "sft": roles["sft"]}
        inputs = list(dict.fromkeys(chosen[name] for name in generate.pop("models")))
        create_job(stage=JobStage.GENERATE, config=generate, inputs=inputs, **base)
    elif job.stage == JobStage.GENERATE:
        Round.objects.filter(pk=round.pk).update(status=Round.Status.FINISHED, finished=timezone.now())


def _scorer_name(path: str, rm: ModelVersion | None) -> str:
    """What the evaluation's "rm" scores are, for the gate's note: the RM this round trained, or on DPO's
    path an earlier round's."""
    if path != "dpo":
        return "the training RM"
    return f"the RM of round {rm.round.number}" if rm is not None and rm.round else "an earlier RM"


# What a gate can keep: the round's new policy, its SFT model, or the policy that was active before it.
GATE_CHOICES = ("new", "sft", "previous")
# The gate replaces the round's new policy only on evidence: another model must beat it on the held-out prompts
# by more than this many standard errors of their paired difference. The scores it decides by are noisy (an
# RM at ~60 % held-out accuracy, a few dozen prompts): deciding on the sign alone once swapped the best model
# of a closed-loop run for a worse one on a difference of 0.1 standard errors (session 7's round 2).
GATE_EVIDENCE_SE = 2.0


def gate_decision(metrics: dict, *, gate: bool, previous: ModelVersion | None, sft: ModelVersion | None = None,
                  policy: str = "ppo", scorer: str = "the training RM") -> tuple[str, str]:
    """Which model becomes the active policy after the round (one of ``GATE_CHOICES``), and why, from the
    evaluate job's metrics (by the judge where there is one, else by ``scorer``, the RM). With the gate on, the
    round's new policy (of its path: ``policy`` is "ppo", "rloo" or "dpo") stays active unless its SFT model or
    the previous active policy beats it on the held-out prompts by more than ``GATE_EVIDENCE_SE`` standard errors
    of the paired difference (against the previous policy, the evaluation's direct pairing; from an evaluation
    without one, the difference of both models' differences from SFT). Of several that do, the one that scores
    best against SFT, a tie going to the newer. With the gate off, or nothing to compare with, the new policy.

    So a new policy that clearly loses is not kept, and when it clearly loses to both, the previous policy is not
    kept over a round SFT model (in later rounds trained from that very policy) that scores above it."""
    label = policy.upper()
    judge = f"summary/{policy}_vs_sft/judge_diff" in metrics
    key, by = ("judge", "the judge") if judge else ("rm", scorer)
    prefix = f"summary/{policy}_vs_sft/{key}"
    if f"{prefix}_diff" not in metrics:
        if metrics.get("summary/scorers") == 0:
            return "new", (f"Nothing to score {label} against SFT with (no reward model yet and no judge on the "
                           "project): the new policy is active unchecked.")
        return "new", "No held-out prompts to compare on: the new policy is active unchecked."
    n, samples = int(metrics.get("summary/prompts", 0)), int(metrics.get("summary/samples_per_prompt", 1))
    each = f" × {samples} samples" if samples > 1 else ""
    text = f"{label} against SFT on {n} held-out prompts{each}, by {by}: {_paired_text(metrics, prefix)}."
    new_diff, new_stderr = metrics[f"{prefix}_diff"], metrics[f"{prefix}_diff_stderr"]
    scores = {"sft": 0.0}  # against SFT
    margins = {"sft": (-new_diff, new_stderr)}  # (how far each beats the new policy, its standard error)
    previous_prefix = f"summary/previous_vs_sft/{key}"
    if previous is not None and f"{previous_prefix}_diff" in metrics:
        scores["previous"] = metrics[f"{previous_prefix}_diff"]
        text += f" The previous policy ({previous}) against SFT: {_paired_text(metrics, previous_prefix)}."
        direct = f"summary/{policy}_vs_previous/{key}"
        if f"{direct}_diff" in metrics:
            text += f" {label} against the previous policy: {_paired_text(metrics, direct)}."
            margins["previous"] = (-metrics[f"{direct}_diff"], metrics[f"{direct}_diff_stderr"])
        else:
            margins["previous"] = (scores["previous"] - new_diff,
                                   math.hypot(new_stderr, metrics[f"{previous_prefix}_diff_stderr"]))
    if not gate:
        return "new", f"{text} The gate is off: the new policy is active."
    beaten_by = [name for name, (margin, stderr) in margins.items() if margin > GATE_EVIDENCE_SE * stderr]
    if not beaten_by:
        who = "Neither SFT nor the previous policy beats" if len(margins) > 1 else "SFT does not beat"
        return "new", f"{text} {who} it by more than {GATE_EVIDENCE_SE:g} standard errors: the new policy is active."
    kept = max(beaten_by, key=lambda name: (scores[name], -GATE_CHOICES.index(name)))
    why = f"beats the new policy by more than {GATE_EVIDENCE_SE:g} standard errors"
    if kept == "sft":
        return kept, (f"{text} The round's SFT model ({sft or 'SFT'}) {why}: it becomes the active policy and "
                      "makes the next round's candidates.")
    return kept, (f"{text} The previous policy {why}: the round keeps it ({previous}) for the next round's "
                  "candidates.")


def _paired_text(metrics: dict, prefix: str) -> str:
    return (f"{metrics[f'{prefix}_diff']:+.3f} ± {metrics[f'{prefix}_diff_stderr']:.3f} "
            f"(win rate {metrics[f'{prefix}_win_rate']:.0%})")


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
    """Ask a job to stop. Cancel always wins: a queued job, or a running one whose worker has stopped
    sending heartbeats (it died), is cancelled now; a live one stops at its next step."""
    now = timezone.now()
    dead = TrainingJob.objects.stale(now).filter(pk=job.pk)
    cancelled = TrainingJob.objects.filter(Q(status=TrainingJob.Status.QUEUED) | Q(pk__in=dead), pk=job.pk).update(
        status=TrainingJob.Status.CANCELLED, cancel_requested=True, finished=now, eta_seconds=0)
    if cancelled:
        on_job_finished(job.pk)
        return
    TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.RUNNING).update(cancel_requested=True)


@transaction.atomic
def retry_job(*, job: TrainingJob) -> TrainingJob:
    """Queue a failed or cancelled job again, with a fresh allowance of attempts; a round's finished stages
    are not redone. The job keeps its output directory, so a stage with a checkpoint resumes from it.

    A job whose round was started again since (a superseded run) is refused: retrying it would run a
    second pipeline in the same round."""
    job = TrainingJob.objects.select_related("round").get(pk=job.pk)
    if job.is_superseded():
        raise Conflict(f"Round {job.round.number} was started again after this job; retry a job of its "
                       "current run instead.")
    updated = TrainingJob.objects.filter(
        pk=job.pk, status__in=[TrainingJob.Status.FAILED, TrainingJob.Status.CANCELLED]
    ).update(status=TrainingJob.Status.QUEUED, cancel_requested=False, error="", finished=None, attempts=0)
    if updated != 1:
        raise Conflict("Only a failed or cancelled job can be retried.")
    if job.round_id:
        Round.objects.filter(pk=job.round_id).update(status=Round.Status.TRAINING, finished=None)
    enqueue(job)
    job.refresh_from_db()
    return job


def start_stage(*, project: Project, stage: str, config: dict | None = None,
                inputs: list[ModelVersion] = ()) -> TrainingJob:
    """One stage on its own (outside a round), on a fresh snapshot of the project's labels."""
    if stage not in JobStage.values:
        raise ValidationError({"stage": [f"must be one of {', '.join(JobStage.values)}"]})
    snapshot = create_snapshot(project=project)
    return create_job(project=project, stage=stage, config=config or {}, snapshot=snapshot, inputs=list(inputs))
