"""A round's path: SFT → RM → RLOO and SFT → DPO run end to end in-process (Celery eager) as SFT → RM → PPO
does, record their path in the lineage, and generate the next round's candidates from their policy; a bad
path is refused before anything is made; an RLOO or DPO job whose worker dies resumes from its checkpoint,
and a cancelled one stops. The gate on these paths is in test_round_gate.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from django.test import Client
from safetensors.torch import load_file

from annotation.loop import rounds
from annotation.loop.worker import JobProgress, run_job
from annotation.models import Candidate, DatasetSnapshot, ModelVersion, Ranking, Round, Task, TrainingJob
from tests.integration.conftest import HELD_OUT, TINY_ROUND, label_everything, rank_without_ties
from training.models import load_tokenizer
from training.reward import RewardModel

pytestmark = [pytest.mark.slow]


def stages_of(round_: Round) -> dict[str, TrainingJob]:
    jobs = {job.stage: job for job in TrainingJob.objects.filter(round=round_)}
    assert all(job.status == "succeeded" for job in jobs.values()), \
        {stage: job.error[-600:] for stage, job in jobs.items()}
    return jobs


def next_round_models(project, number: int) -> set[ModelVersion]:
    tasks = Task.objects.filter(round=Round.objects.get(project=project, number=number), kind="ranking")
    assert tasks.exists()
    return {c.model_version for task in tasks for c in task.candidates.all()}


def test_an_rloo_round_trains_sft_rm_rloo_and_generates_from_the_rloo_policy(loop_project, transactional_db, eager,
                                                                            client_for, users):
    label_everything(loop_project)
    round1 = rounds.start_round(project=loop_project, config={**TINY_ROUND, "path": "rloo"})
    round1.refresh_from_db()
    jobs = stages_of(round1)
    assert set(jobs) == {"sft", "rm", "rloo", "evaluate", "generate"} and round1.status == Round.Status.FINISHED
    sft, rm, rloo = (jobs[s].result_model for s in ("sft", "rm", "rloo"))
    # The lineage says which path made the policy: an RLOO model on the round's SFT, trained against its RM.
    assert (rloo.stage, rloo.parent, rloo.round) == ("rloo", sft, round1) and rm.parent == sft
    assert set(jobs["rloo"].input_models.all()) == {sft, rm} and rloo.snapshot_id == jobs["sft"].snapshot_id
    loop_project.refresh_from_db()
    assert loop_project.active_policy == rloo
    # RLOO charted its rollouts and its held-out evaluation (before training and at the end), as PPO does.
    assert any("rloo/kl" in h and "rloo/score" in h for h in jobs["rloo"].history)
    assert [h["step"] for h in jobs["rloo"].history if "eval/score" in h] == [0, 3]
    # The round's comparison treats it as PPO's: RLOO against SFT on the held-out prompts, by the training RM.
    assert set(jobs["evaluate"].input_models.all()) == {rloo, sft, rm}
    assert round1.comparison["prompts"] == len(HELD_OUT) and "rloo_vs_sft/rm_diff" in round1.comparison
    assert "RLOO against SFT on 2 held-out prompts, by the training RM" in round1.gate_note
    # Round 2's candidates come from the RLOO policy (mixed with SFT, as the config asks).
    assert next_round_models(loop_project, 2) == {rloo, sft}
    candidate = Candidate.objects.filter(model_version=rloo).first()
    lineage = client_for("sam").get(f"/api/candidates/{candidate.pk}/lineage/").json()
    assert [step["stage"] for step in lineage["lineage"]] == ["rloo", "sft", "base"]
    assert lineage["lineage"][0]["inputs"] == sorted([sft.pk, rm.pk])
    assert client_for("sam").get(f"/api/rounds/{round1.pk}/").json()["path"] == "rloo"
    pages = Client()
    pages.force_login(users["sam"])
    assert "path sft → rm → rloo" in pages.get(f"/manage/jobs/{jobs['rloo'].pk}/").content.decode()
    project_page = pages.get(f"/manage/projects/{loop_project.pk}/").content.decode()
    assert f"RLOO policy #{rloo.pk}" in project_page and '<td data-field="path">RLOO</td>' in project_page


def test_iterative_dpo_rounds_train_on_the_rankings_and_generate_from_the_dpo_policy(loop_project, transactional_db,
                                                                                    eager, client_for, users):
    label_everything(loop_project)
    round1 = rounds.start_round(project=loop_project, config={**TINY_ROUND, "path": "dpo"})
    round1.refresh_from_db()
    jobs = stages_of(round1)
    assert set(jobs) == {"sft", "dpo", "evaluate", "generate"} and round1.status == Round.Status.FINISHED
    sft, dpo = jobs["sft"].result_model, jobs["dpo"].result_model
    assert (dpo.stage, dpo.parent, list(jobs["dpo"].input_models.all())) == ("dpo", sft, [sft])
    assert not ModelVersion.objects.filter(project=loop_project, stage="rm").exists()
    assert any("train/loss" in h and "train/accuracy" in h for h in jobs["dpo"].history)
    # No reward model yet and no judge: nothing scores the comparison, and the round says so.
    assert jobs["evaluate"].metrics["summary/scorers"] == 0
    assert round1.gate_note.startswith("Nothing to score DPO against SFT with")
    loop_project.refresh_from_db()
    assert loop_project.active_policy == dpo
    assert next_round_models(loop_project, 2) == {dpo, sft}
    candidate = Candidate.objects.filter(model_version=dpo).first()
    lineage = client_for("sam").get(f"/api/candidates/{candidate.pk}/lineage/").json()
    assert [step["stage"] for step in lineage["lineage"]] == ["dpo", "sft", "base"]

    # Round 2 ranks round 1's DPO candidates, and DPO trains on those rankings. An RM from an earlier round
    # (here the tiny base under a fresh head: the wiring is what is tested, not its scores) scores the comparison.
    earlier_rm = ModelVersion.objects.create(project=loop_project, stage="rm", round=round1, name="earlier RM",
                                             artifact_path=loop_project.base_model.artifact_path)
    rank_without_ties(loop_project)
    round2 = rounds.start_round(project=loop_project, config={**TINY_ROUND, "path": "dpo"})
    round2.refresh_from_db()
    jobs2 = stages_of(round2)
    sft2, dpo2 = jobs2["sft"].result_model, jobs2["dpo"].result_model
    snapshot = DatasetSnapshot.objects.get(pk=jobs2["dpo"].snapshot_id)
    round2_rankings = set(Ranking.objects.filter(task__round=Round.objects.get(project=loop_project, number=2))
                          .values_list("id", flat=True))
    assert round2_rankings and round2_rankings <= set(snapshot.ranking_ids)
    assert (sft2.parent, dpo2.parent) == (sft, sft2)   # SFT continues; DPO's reference is this round's SFT
    # The held-out prompts got candidates in round 1: DPO now measures its ranking accuracy on them.
    assert any("eval/accuracy" in h for h in jobs2["dpo"].history)
    assert set(jobs2["evaluate"].input_models.all()) == {dpo2, sft2, earlier_rm, dpo}
    assert {"dpo_vs_sft/rm_diff", "previous/rm", "dpo/kl"} <= set(round2.comparison)
    assert "DPO against SFT on 2 held-out prompts, by the RM of round 1" in round2.gate_note
    assert next_round_models(loop_project, 3) == {dpo2, sft2}


def test_a_bad_path_is_refused_with_a_field_message_and_nothing_is_made(loop_project, client_for, users):
    from annotation.models import Membership

    label_everything(loop_project)
    Membership.objects.create(project=loop_project, user=users["adam"], role="admin")
    url = f"/api/projects/{loop_project.pk}/start-round/"
    response = client_for("adam").post(url, {"config": {"path": "grpo"}}, format="json")
    assert response.status_code == 400
    assert response.json()["fields"]["config"]["path"] == [
        'unknown path \'grpo\'; use "ppo" (sft → rm → ppo), "rloo" (sft → rm → rloo), "dpo" (sft → dpo)']
    response = client_for("adam").post(url, {"config": {"path": ["dpo"]}}, format="json")
    assert response.status_code == 400 and "unknown path" in response.json()["fields"]["config"]["path"][0]
    # A DPO round has no PPO model to generate from, and a bad DPO setting names its stage.
    response = client_for("adam").post(url, {"config": {"path": "dpo", "dpo": {"loss": "hinge"}, "generate": {
        "models": ["ppo"]}}}, format="json")
    errors = response.json()["fields"]["config"]
    assert response.status_code == 400 and "loss" in errors["dpo"][0] and "dpo policy" in errors["generate"][0]
    assert not Round.objects.filter(project=loop_project).exclude(status="collecting").exists()
    assert not DatasetSnapshot.objects.filter(project=loop_project).exists()
    assert not TrainingJob.objects.filter(project=loop_project).exists()


# Long enough to die or be cancelled half-way; a checkpoint every iteration (RLOO) or every 2 steps (DPO).
STAGE_CONFIG = {
    "rloo": {**TINY_ROUND["rloo"], "iterations": 6, "minibatch_size": 4},  # one minibatch: whole iterations
    "dpo": {**TINY_ROUND["dpo"], "max_steps": 8},
}


@pytest.fixture
def path_inputs(loop_project, tiny_base, tmp_path):
    """Labels for a snapshot, an SFT model (the tiny base) and a saved RM (its head fixed once, on disk)."""
    label_everything(loop_project)
    RewardModel.from_pretrained(tiny_base).save_pretrained(tmp_path / "rm", load_tokenizer(tiny_base))
    sft = ModelVersion.objects.create(project=loop_project, stage="sft", artifact_path=str(tiny_base),
                                      parent=loop_project.base_model)
    rm = ModelVersion.objects.create(project=loop_project, stage="rm", artifact_path=str(tmp_path / "rm"), parent=sft)
    return {"rloo": [sft, rm], "dpo": [sft]}


def weights(directory: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(path))
    assert tensors, f"no weights in {directory}"
    return tensors


class WorkerDied(Exception):
    """The worker's process ends mid-stage: nothing after the last checkpoint survives."""


@pytest.mark.parametrize("stage", ["rloo", "dpo"])
def test_an_rloo_or_dpo_job_whose_worker_died_resumes_and_ends_as_an_uninterrupted_run(
        stage, loop_project, transactional_db, eager, path_inputs, monkeypatch):
    real_on_log, died = JobProgress.on_log, []

    def dies_at_step_3(self, step, total, metrics):
        real_on_log(self, step, total, metrics)
        if step == 3 and not died:
            died.append(step)
            raise WorkerDied

    monkeypatch.setattr(JobProgress, "on_log", dies_at_step_3)
    job = rounds.start_stage(project=loop_project, stage=stage, config=STAGE_CONFIG[stage], inputs=path_inputs[stage])
    job.refresh_from_db()
    assert job.status == "failed" and "WorkerDied" in job.error and died == [3]
    rounds.retry_job(job=job)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert "resuming from its checkpoint" in job.log_tail and job.result_model.stage == stage
    twin = TrainingJob.objects.create(project=loop_project, stage=stage, config=job.config, snapshot=job.snapshot)
    twin.input_models.set(job.input_models.all())
    assert run_job(twin.pk) == "succeeded"
    twin.refresh_from_db()
    resumed, straight = weights(job.result_model.artifact_path), weights(twin.result_model.artifact_path)
    assert resumed.keys() == straight.keys()
    assert all(torch.allclose(resumed[k].float(), straight[k].float(), atol=1e-5) for k in resumed)


@pytest.mark.parametrize("stage", ["rloo", "dpo"])
def test_a_cancelled_rloo_or_dpo_job_stops_at_its_next_step(stage, loop_project, transactional_db, eager,
                                                          path_inputs, monkeypatch):
    real_on_log = JobProgress.on_log

    def cancel_at_step_2(self, step, total, metrics):
        real_on_log(self, step, total, metrics)
        if step == 2:  # an admin presses Cancel while the stage runs
            rounds.cancel_job(job=TrainingJob.objects.get(pk=self.job_id))
            self.last_check = 0.0

    monkeypatch.setattr(JobProgress, "on_log", cancel_at_step_2)
    job = rounds.start_stage(project=loop_project, stage=stage, config=STAGE_CONFIG[stage], inputs=path_inputs[stage])
    job.refresh_from_db()
    assert job.status == "cancelled" and job.result_model is None
    assert 2 <= job.step < job.total
