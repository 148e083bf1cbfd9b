"""Training rounds in-process (Celery eager): claiming, the SFT → RM → PPO → generate pipeline with its
lineage, cancellation and retry of a failed stage. The real-worker tests are in test_worker.py."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from rlhf_platform.celery import app

from annotation.loop import rounds
from annotation.loop.worker import claim_job, run_job
from annotation.models import Candidate, ModelVersion, Round, Task, TrainingJob
from tests.integration.conftest import HELD_OUT, TINY_ROUND, label_everything

pytestmark = [pytest.mark.slow]


@pytest.fixture
def queued_job(loop_project, transactional_db):
    label_everything(loop_project)
    app.conf.task_always_eager = False
    from annotation.loop.snapshots import create_snapshot

    job = TrainingJob.objects.create(project=loop_project, stage="sft", config=TINY_ROUND["sft"],
                                     snapshot=create_snapshot(project=loop_project))
    job.input_models.set([loop_project.base_model])
    return job


def test_claiming_a_job_is_idempotent(queued_job):
    assert claim_job(queued_job.pk, "worker-a") is not None
    assert claim_job(queued_job.pk, "worker-b") is None          # a duplicate delivery does nothing
    queued_job.refresh_from_db()
    assert (queued_job.status, queued_job.worker_host, queued_job.attempts) == ("running", "worker-a", 1)


def test_a_job_whose_heartbeat_went_stale_can_be_claimed_again(queued_job, settings):
    settings.TRAINING_JOB_STALE_SECONDS = 30
    claim_job(queued_job.pk, "worker-a")
    TrainingJob.objects.filter(pk=queued_job.pk).update(heartbeat=timezone.now() - timedelta(seconds=31))
    again = claim_job(queued_job.pk, "worker-b")
    assert again is not None and again.attempts == 2 and again.worker_host == "worker-b"


def test_a_cancelled_queued_job_never_runs(queued_job):
    rounds.cancel_job(job=queued_job)
    assert run_job(queued_job.pk) == "skipped"
    queued_job.refresh_from_db()
    assert queued_job.status == "cancelled" and not queued_job.result_model


def test_a_running_job_stops_at_its_next_step_when_cancelled(queued_job):
    from annotation.loop.worker import JobProgress

    claimed = claim_job(queued_job.pk, "worker-a")
    progress = JobProgress(claimed, interval=0)
    assert progress.should_stop() is False
    rounds.cancel_job(job=claimed)
    progress.last_check = 0
    assert progress.should_stop() is True


def test_a_round_runs_sft_rm_ppo_and_generates_the_next_rounds_tasks(loop_project, transactional_db, eager,
                                                                     client_for, users):
    label_everything(loop_project)
    round1 = rounds.start_round(project=loop_project, config=TINY_ROUND)
    round1.refresh_from_db()
    jobs = {job.stage: job for job in TrainingJob.objects.filter(round=round1)}
    assert {stage: job.status for stage, job in jobs.items()} == {
        "sft": "succeeded", "rm": "succeeded", "ppo": "succeeded", "evaluate": "succeeded",
        "generate": "succeeded"}, \
        {stage: job.error[-600:] for stage, job in jobs.items()}
    assert round1.status == Round.Status.FINISHED
    sft, rm, ppo = (jobs[s].result_model for s in ("sft", "rm", "ppo"))
    assert sft.parent == loop_project.base_model and rm.parent == sft and ppo.parent == sft
    assert set(jobs["ppo"].input_models.all()) == {sft, rm}
    assert all(m.snapshot_id == jobs["sft"].snapshot_id for m in (sft, rm, ppo))
    loop_project.refresh_from_db()
    assert loop_project.active_policy == ppo
    # PPO rolled out, and the evaluation sampled, with the candidates' length and format (the project's).
    for stage in ("ppo", "evaluate"):
        saved = json.loads(Path(jobs[stage].output_dir, "stage_config.json").read_text())["config"]
        assert (saved["max_new_tokens"], saved["chat_template"]) == (6, False), stage
    # The round ends with a comparison on the held-out prompts: PPO against SFT, with KL and length.
    assert jobs["evaluate"].status == "succeeded" and set(jobs["evaluate"].input_models.all()) == {ppo, sft, rm}
    assert round1.comparison["prompts"] == 2 and "ppo_vs_sft/rm_diff" in round1.comparison
    assert {"ppo/kl", "ppo/length", "ppo/eos_rate", "sft/rm"} <= set(round1.comparison)
    assert abs(round1.comparison["sft/kl"]) < 1e-3 and "PPO against SFT on 2 held-out prompts" in round1.gate_note
    # Every artifact and metric is recorded.
    for job in jobs.values():
        assert job.step == job.total > 0 and job.metrics and job.history and job.output_dir
    assert any("train/loss" in h for h in jobs["sft"].history) and "eval/loss" in jobs["sft"].history[-1]
    assert any("ppo/kl" in h for h in jobs["ppo"].history)
    # PPO evaluated on the held-out prompts before training and at its end: the job page charts it.
    held_out = [h for h in jobs["ppo"].history if "eval/score" in h]
    assert [h["step"] for h in held_out] == [0, 3] and abs(held_out[0]["eval/kl"]) < 1e-4
    assert {"eval/length", "eval/eos_rate"} <= set(held_out[-1])
    assert any("accuracy" in k for k in jobs["rm"].metrics)
    # Round 2's ranking tasks hold candidates from round 1's PPO (and SFT, mixed) models.
    round2 = Round.objects.get(project=loop_project, number=2)
    tasks = Task.objects.filter(round=round2, kind="ranking")
    # The held-out prompts get the new policy's candidates too: the RM's held-out set grows with the loop.
    assert tasks.count() == TINY_ROUND["generate"]["prompts"] + len(HELD_OUT)
    assert sorted(t.prompt.text for t in tasks if t.prompt.split == "test") == HELD_OUT
    assert TrainingJob.objects.get(round=round1, stage="generate").metrics["summary/held_out_prompts"] == 2
    for task in tasks:
        origins = {c.model_version for c in task.candidates.all()}
        assert origins == {ppo, sft}
    candidate = Candidate.objects.filter(model_version=ppo).first()
    assert candidate.generation_params["job"] == jobs["generate"].pk and candidate.seed is not None
    lineage = client_for("sam").get(f"/api/candidates/{candidate.pk}/lineage/").json()
    assert [step["stage"] for step in lineage["lineage"]] == ["ppo", "sft", "base"]
    assert lineage["lineage"][0]["labels"]["rankings"] == jobs["sft"].snapshot.ranking_ids
    assert lineage["lineage"][0]["inputs"] == sorted([sft.pk, rm.pk])
    # Artifacts are never overwritten: every model has its own directory.
    assert len({m.artifact_path for m in ModelVersion.objects.all()}) == ModelVersion.objects.count()


def test_a_failed_stage_is_retried_without_redoing_finished_ones(loop_project, transactional_db, eager,
                                                                 monkeypatch):
    from annotation.loop import stages

    real_rm, calls = stages.RUNNERS["rm"], []

    def crashes_once(job, out, progress):  # e.g. the GPU ran out of memory on the first try
        calls.append(job.pk)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_rm(job, out, progress)

    monkeypatch.setitem(stages.RUNNERS, "rm", crashes_once)
    label_everything(loop_project)
    round1 = rounds.start_round(project=loop_project, config=TINY_ROUND)
    rm_job = TrainingJob.objects.get(round=round1, stage="rm")
    round1.refresh_from_db()
    assert rm_job.status == "failed" and "CUDA out of memory" in rm_job.error and round1.status == "failed"
    assert not TrainingJob.objects.filter(round=round1, stage="ppo").exists()
    rounds.retry_job(job=rm_job)
    round1.refresh_from_db()
    assert round1.status == "finished"
    assert TrainingJob.objects.filter(round=round1, stage="sft").count() == 1
    assert TrainingJob.objects.get(round=round1, stage="sft").attempts == 1
    # A retry gets a fresh allowance of attempts; the log keeps the earlier ones.
    retried = TrainingJob.objects.get(pk=rm_job.pk)
    assert retried.attempts == 1 and retried.error == "" and "attempt 1 of 3" in retried.log_tail


def test_a_round_config_is_validated_with_clear_errors(loop_project, client_for, users):
    from annotation.models import Membership

    Membership.objects.create(project=loop_project, user=users["adam"], role="admin")
    response = client_for("adam").post(f"/api/projects/{loop_project.pk}/start-round/",
                                       {"config": {"sft": {"learning_rate": -1}, "ppo": {"minibatch_size": 99},
                                                   "grpo": {}}})
    assert response.status_code == 400
    errors = response.json()["fields"]["config"]
    assert "learning_rate" in errors["sft"][0] and "minibatch_size" in errors["ppo"][0]
    assert "grpo" in errors["non_field_errors"][0]
    response = client_for("adam").post(f"/api/projects/{loop_project.pk}/start-round/",
                                       {"config": {"ppo": {"max_new_tokens": 99}, "sft": {"chat_template": True}}})
    errors = response.json()["fields"]["config"]
    assert "the project's setting" in errors["ppo"][0] and "the project's setting" in errors["sft"][0]
    assert not Round.objects.filter(project=loop_project, status="training").exists()
