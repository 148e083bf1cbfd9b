"""A later round's SFT: where it starts (``sft.init``) and what it trains on (``sft.data``). With the cpu and gpu
presets' "policy" and "new" it continues from the best model so far and trains on the labels no earlier round
held (iterated rejection-sampling fine-tuning, as in Llama 2); "sft" and "all" are the earlier behaviour, under
which round 2's SFT scored below round 1's policy (docs/benchmarks.md, "Second run, round 2")."""
from __future__ import annotations

import pytest

from annotation import services
from annotation.loop import rounds, stages
from annotation.loop.config import validate_round_config
from annotation.loop.rounds import sft_start_model
from annotation.loop.snapshots import verify_snapshot
from annotation.models import (
    Candidate,
    DatasetSnapshot,
    Demonstration,
    Membership,
    ModelVersion,
    Ranking,
    Round,
    TrainingJob,
)
from tests.integration.conftest import TINY_ROUND, label_everything, rank_without_ties

pytestmark = [pytest.mark.slow]

BUILDS_ON_POLICY = {**TINY_ROUND, "sft": {**TINY_ROUND["sft"], "best_ranked": True, "init": "policy", "data": "new"}}
AS_BEFORE = {**TINY_ROUND, "path": "dpo",  # the cheapest path: where SFT starts does not depend on it
             "sft": {**TINY_ROUND["sft"], "best_ranked": True, "init": "sft", "data": "all"}}


def stages_of(round_: Round) -> dict[str, TrainingJob]:
    round_.refresh_from_db()
    jobs = {job.stage: job for job in TrainingJob.objects.filter(round=round_)}
    assert round_.status == "finished", {stage: job.error[-600:] for stage, job in jobs.items()}
    return jobs


def train_labels(snapshot: DatasetSnapshot, *, since: DatasetSnapshot | None = None) -> tuple[int, int]:
    """The snapshot's demonstrations and rankings of train prompts (what SFT trains on), less those of ``since``."""
    demos = set(snapshot.demonstration_ids) - set(since.demonstration_ids if since else [])
    rankings = set(snapshot.ranking_ids) - set(since.ranking_ids if since else [])
    return (Demonstration.objects.filter(pk__in=demos, prompt__split="train").count(),
            Ranking.objects.filter(pk__in=rankings, task__prompt__split="train").count())


def test_a_later_rounds_sft_builds_on_the_previous_rounds_policy(loop_project, transactional_db, eager,
                                                                 monkeypatch, client_for, users):
    label_everything(loop_project)
    round1 = rounds.start_round(project=loop_project, config=BUILDS_ON_POLICY)
    jobs1 = stages_of(round1)
    # Round 1 has no earlier snapshot and no policy: it starts from the base and trains on everything, as before.
    sft1, ppo1 = jobs1["sft"].result_model, jobs1["ppo"].result_model
    assert sft1.parent == loop_project.base_model and jobs1["sft"].config["exclude_snapshots"] == []
    demos1, rankings1 = train_labels(jobs1["sft"].snapshot)
    assert jobs1["sft"].metrics["summary/train_examples"] == demos1 + rankings1 > 0
    loop_project.refresh_from_db()
    assert loop_project.active_policy == ppo1

    # Round 2 ranks round 1's candidates (no new demonstrations, as in a real round 2).
    rank_without_ties(loop_project)
    round2 = rounds.start_round(project=loop_project, config=BUILDS_ON_POLICY)
    jobs2 = stages_of(round2)
    sft2, rm2, ppo2 = (jobs2[s].result_model for s in ("sft", "rm", "ppo"))
    # SFT starts from round 1's policy, not from round 1's SFT; PPO (and its KL reference) from this SFT.
    assert list(jobs2["sft"].input_models.all()) == [ppo1] and sft2.parent == ppo1
    assert ppo2.parent == sft2 and set(jobs2["ppo"].input_models.all()) == {sft2, rm2}
    assert jobs2["evaluate"].config["models"]["previous"] == ppo1.pk
    # SFT trains on the best-ranked candidates of the new rankings only; the RM on every ranking.
    snapshot1, snapshot2 = jobs1["sft"].snapshot, jobs2["sft"].snapshot
    assert jobs2["sft"].config["exclude_snapshots"] == [snapshot1.pk]
    new_demos, new_rankings = train_labels(snapshot2, since=snapshot1)
    assert (new_demos, new_rankings > 0) == (0, True)
    sft_metrics = jobs2["sft"].metrics
    assert sft_metrics["summary/best_ranked_examples"] == sft_metrics["summary/train_examples"] == new_rankings
    assert jobs2["rm"].metrics["summary/train_examples"] >= snapshot2.files["rankings.jsonl"]["records"] > new_rankings
    assert verify_snapshot(snapshot2)  # the filtering wrote the job's own files: the snapshot is as exported
    candidate = Candidate.objects.filter(model_version=ppo2).first()
    lineage = client_for("sam").get(f"/api/candidates/{candidate.pk}/lineage/").json()
    assert [step["stage"] for step in lineage["lineage"]] == ["ppo", "sft", "ppo", "sft", "base"]

    # Nothing new since round 2: round 3 is refused, as a round with an empty snapshot is, and nothing is made.
    Membership.objects.create(project=loop_project, user=users["adam"], role="admin")
    snapshots, jobs = DatasetSnapshot.objects.count(), TrainingJob.objects.count()
    response = client_for("adam").post(f"/api/projects/{loop_project.pk}/start-round/",
                                       {"config": BUILDS_ON_POLICY}, format="json")
    assert response.status_code == 400
    assert response.json()["fields"]["snapshot"][0].startswith("nothing new for SFT to train on since the earlier "
                                                                "rounds: no new demonstration and no new ranking")
    round3 = Round.objects.get(project=loop_project, number=3)
    assert round3.status == "collecting" and round3.run == 0
    assert (DatasetSnapshot.objects.count(), TrainingJob.objects.count()) == (snapshots, jobs)

    # A new demonstration is enough: round 3's SFT starts from round 2's policy and trains on it alone.
    services.bulk_create_prompts(project=loop_project, items=[{"text": f"One more question, number {i}?"}
                                                              for i in range(4)])
    label_everything(loop_project)
    monkeypatch.setitem(stages.RUNNERS, "rm", lambda job, out, progress: stages.StageOutcome("stopped"))
    round3 = rounds.start_round(project=loop_project, config={**BUILDS_ON_POLICY, "sft": {
        **BUILDS_ON_POLICY["sft"], "best_ranked": False}})
    sft3_job = TrainingJob.objects.get(round=round3, stage="sft")
    assert sft3_job.status == "succeeded", sft3_job.error[-600:]
    new_demos, _ = train_labels(sft3_job.snapshot, since=snapshot2)
    assert new_demos > 0 and sft3_job.metrics["summary/train_examples"] == new_demos
    assert sft3_job.config["exclude_snapshots"] == [snapshot1.pk, snapshot2.pk]
    assert sft3_job.result_model.parent == ppo2


def test_init_sft_and_data_all_train_as_before(loop_project, transactional_db, eager):
    label_everything(loop_project)
    jobs1 = stages_of(rounds.start_round(project=loop_project, config=AS_BEFORE))
    sft1, dpo1 = jobs1["sft"].result_model, jobs1["dpo"].result_model
    loop_project.refresh_from_db()
    assert loop_project.active_policy == dpo1
    rank_without_ties(loop_project)
    jobs2 = stages_of(rounds.start_round(project=loop_project, config=AS_BEFORE))
    # The latest SFT model, not the active policy; and the whole snapshot, old labels included.
    assert jobs2["sft"].result_model.parent == sft1 and "exclude_snapshots" not in jobs2["sft"].config
    demos, rankings = train_labels(jobs2["sft"].snapshot)
    _, new_rankings = train_labels(jobs2["sft"].snapshot, since=jobs1["sft"].snapshot)
    assert rankings > new_rankings > 0
    assert jobs2["sft"].metrics["summary/best_ranked_examples"] == rankings
    assert jobs2["sft"].metrics["summary/train_examples"] == demos + rankings


def test_sft_starts_from_the_model_its_init_names(loop_project):
    base = loop_project.base_model
    assert {init: sft_start_model(loop_project, init) for init in ("policy", "sft", "base")} == \
        {"policy": base, "sft": base, "base": base}                    # round 1: the base, whatever init says
    sft = ModelVersion.objects.create(project=loop_project, stage="sft", parent=base, artifact_path="-")
    assert sft_start_model(loop_project, "policy") == sft              # no active policy yet (the gate kept SFT)
    policy = ModelVersion.objects.create(project=loop_project, stage="rloo", parent=sft, artifact_path="-")
    loop_project.active_policy = policy
    loop_project.save()
    assert {init: sft_start_model(loop_project, init) for init in ("policy", "sft", "base")} == \
        {"policy": policy, "sft": sft, "base": base}


def test_the_cpu_and_gpu_presets_build_on_the_policy_and_the_tiny_one_as_before():
    for name in ("cpu", "gpu"):
        assert {k: validate_round_config({"preset": name})["sft"][k] for k in ("init", "data")} == \
            {"init": "policy", "data": "new"}
    assert {k: validate_round_config({"preset": "tiny"})["sft"][k] for k in ("init", "data")} == \
        {"init": "sft", "data": "all"}


def test_bad_sft_init_or_data_is_refused_with_field_messages_and_nothing_is_made(loop_project, client_for, users):
    label_everything(loop_project)
    Membership.objects.create(project=loop_project, user=users["adam"], role="admin")
    url = f"/api/projects/{loop_project.pk}/start-round/"
    response = client_for("adam").post(url, {"config": {"sft": {"init": "ppo", "data": ["new"]}}}, format="json")
    assert response.status_code == 400
    assert response.json()["fields"]["config"]["sft"] == [
        'init must be "policy" (the project\'s active policy, else its latest SFT model, else the base), "sft" '
        '(the project\'s latest SFT model, else the base) or "base" (the project\'s base model), not \'ppo\'',
        'data must be "new" (only labels that no earlier round\'s snapshot held) or "all" (the whole snapshot), '
        "not ['new']"]
    response = client_for("adam").post(url, {"config": {"sft": {"exclude_snapshots": [1]}}}, format="json")
    assert response.status_code == 400 and "exclude_snapshots" in response.json()["fields"]["config"]["sft"][0]
    assert not Round.objects.filter(project=loop_project).exclude(status="collecting").exists()
    assert not DatasetSnapshot.objects.filter(project=loop_project).exists()
    assert not TrainingJob.objects.filter(project=loop_project).exists()
