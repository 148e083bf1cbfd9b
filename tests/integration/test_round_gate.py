"""The round gate: of the round's new PPO (or RLOO, or DPO) policy, its SFT model and the previous active policy,
the one that scores best on held-out prompts becomes the active policy; the next round's candidates come from it,
and the round says why."""
from __future__ import annotations

import pytest

from annotation.loop import rounds, stages
from annotation.loop.config import validate_round_config
from annotation.loop.rounds import gate_decision
from annotation.models import ModelVersion, Round, Task, TrainingJob
from tests.integration.conftest import TINY_ROUND, label_everything

pytestmark = [pytest.mark.slow]

LOSING = {"summary/prompts": 100, "summary/ppo_vs_sft/rm_diff": -0.18, "summary/ppo_vs_sft/rm_diff_stderr": 0.02,
          "summary/ppo_vs_sft/rm_win_rate": 0.13}


# The second round of the closed loop's third run (session 6), by the training RM: the new PPO policy and the
# previous (round-1) policy both lost to the round-2 SFT model, which was trained from that previous policy.
ROUND_2 = {"summary/prompts": 22, "summary/samples_per_prompt": 2,
           "summary/ppo_vs_sft/rm_diff": -0.066, "summary/ppo_vs_sft/rm_diff_stderr": 0.059,
           "summary/ppo_vs_sft/rm_win_rate": 0.432, "summary/previous_vs_sft/rm_diff": -0.054,
           "summary/previous_vs_sft/rm_diff_stderr": 0.072, "summary/previous_vs_sft/rm_win_rate": 0.409}


def test_a_policy_that_loses_to_sft_leaves_sft_active_when_there_is_no_previous_policy():
    kept, note = gate_decision(LOSING, gate=True, previous=None, sft=ModelVersion(name="round 1 SFT"))
    assert kept == "sft" and note == ("PPO against SFT on 100 held-out prompts, by the training RM: -0.180 ± 0.020 "
                                      "(win rate 13%). The round's SFT model (round 1 SFT) scored best: it becomes "
                                      "the active policy and makes the next round's candidates.")
    kept, note = gate_decision(LOSING, gate=False, previous=None)
    assert kept == "new" and "The gate is off" in note
    kept, note = gate_decision({**LOSING, "summary/ppo_vs_sft/rm_diff": 0.3}, gate=True, previous=None)
    assert kept == "new" and note.endswith("The new policy scored best: it is active.")
    assert gate_decision({}, gate=True, previous=None)[0] == "new"


def test_the_gate_keeps_the_previous_policy_when_it_beats_both_new_models():
    previous = ModelVersion(name="round 1 PPO")
    better = {**ROUND_2, "summary/previous_vs_sft/rm_diff": 0.05}
    kept, note = gate_decision(better, gate=True, previous=previous)
    assert kept == "previous"
    assert note.endswith("The previous policy (round 1 PPO) against SFT: +0.050 ± 0.072 (win rate 41%). The previous "
                         "policy scored best: the round keeps it (round 1 PPO) for the next round's candidates.")
    # A new policy that beats SFT but not the previous policy is not kept either.
    kept, _ = gate_decision({**better, "summary/ppo_vs_sft/rm_diff": 0.03}, gate=True, previous=previous)
    assert kept == "previous"
    kept, _ = gate_decision({**better, "summary/ppo_vs_sft/rm_diff": 0.05}, gate=True, previous=previous)
    assert kept == "new"  # a tie goes to the newer model


def test_the_gate_prefers_the_new_sft_model_to_a_previous_policy_that_scores_below_it():
    """Regression: the gate compared the new policy with SFT only and, when it lost, kept the previous policy
    even when the round's SFT model beat it (session 6's round 2: SFT +0.18 over the kept policy by the labelers'
    own score)."""
    kept, note = gate_decision(ROUND_2, gate=True, previous=ModelVersion(name="round 1 PPO"),
                               sft=ModelVersion(name="round 2 SFT"))
    assert kept == "sft"
    assert note == ("PPO against SFT on 22 held-out prompts × 2 samples, by the training RM: -0.066 ± 0.059 (win rate "
                    "43%). The previous policy (round 1 PPO) against SFT: -0.054 ± 0.072 (win rate 41%). The round's "
                    "SFT model (round 2 SFT) scored best: it becomes the active policy and makes the next round's "
                    "candidates.")


def test_the_note_says_how_many_samples_each_prompt_had():
    kept, note = gate_decision({**LOSING, "summary/samples_per_prompt": 4}, gate=True, previous=None)
    assert kept == "sft" and note.startswith("PPO against SFT on 100 held-out prompts × 4 samples, by the training RM")


def test_the_cpu_preset_compares_on_several_samples_per_prompt():
    assert validate_round_config({"preset": "cpu"})["evaluate"]["samples"] >= 2


def test_the_judge_decides_when_there_is_one():
    judged = {**LOSING, "summary/ppo_vs_sft/judge_diff": 0.1, "summary/ppo_vs_sft/judge_diff_stderr": 0.05,
              "summary/ppo_vs_sft/judge_win_rate": 0.6}
    kept, note = gate_decision(judged, gate=True, previous=None)
    assert kept == "new" and "by the judge: +0.100" in note


def on_path(metrics: dict, path: str) -> dict:
    return {k.replace("/ppo_vs_sft/", f"/{path}_vs_sft/"): v for k, v in metrics.items()}


def test_the_gate_judges_an_rloo_or_dpo_policy_as_a_ppo_one():
    kept, note = gate_decision(on_path(LOSING, "rloo"), gate=True, previous=None, policy="rloo")
    assert kept == "sft" and note.startswith("RLOO against SFT on 100 held-out prompts, by the training RM: -0.180")
    assert "SFT model (SFT) scored best" in note
    kept, note = gate_decision(on_path(LOSING, "dpo"), gate=True, previous=None, policy="dpo",
                               scorer="the RM of round 1")
    assert kept == "sft" and note.startswith("DPO against SFT on 100 held-out prompts, by the RM of round 1: -0.180")
    # A PPO policy's numbers say nothing about a DPO round's policy.
    assert gate_decision(LOSING, gate=True, previous=None, policy="dpo")[0] == "new"


def test_a_dpo_policy_with_nothing_to_score_it_passes_and_the_note_says_why():
    kept, note = gate_decision({"summary/scorers": 0}, gate=True, previous=None, policy="dpo")
    assert kept == "new" and note == ("Nothing to score DPO against SFT with (no reward model yet and no judge on the "
                              "project): the new policy is active unchecked.")


@pytest.mark.parametrize("path", ["rloo", "dpo"])
def test_a_round_whose_rloo_or_dpo_policy_loses_keeps_sft_for_the_next_candidates(
        path, loop_project, transactional_db, eager, monkeypatch):
    def losing_evaluation(job, out, progress):  # keyed by the path's policy, as the real evaluation names it
        losing = on_path(LOSING, path)
        return stages.StageOutcome("completed", {k.removeprefix("summary/"): v for k, v in losing.items()})

    monkeypatch.setitem(stages.RUNNERS, "evaluate", losing_evaluation)
    label_everything(loop_project)
    round1 = rounds.start_round(project=loop_project, config={**TINY_ROUND, "path": path, "gate": True})
    round1.refresh_from_db()
    loop_project.refresh_from_db()
    policy = TrainingJob.objects.get(round=round1, stage=path).result_model
    sft = TrainingJob.objects.get(round=round1, stage="sft").result_model
    assert round1.status == "finished" and loop_project.active_policy == sft and policy.stage == path
    assert f"{path.upper()} against SFT" in round1.gate_note and "SFT model" in round1.gate_note
    assert "scored best: it becomes the active policy" in round1.gate_note
    assert list(TrainingJob.objects.get(round=round1, stage="generate").input_models.all()) == [sft]
    next_tasks = Task.objects.filter(round=Round.objects.get(project=loop_project, number=2), kind="ranking")
    assert next_tasks.exists() and all({c.model_version for c in t.candidates.all()} == {sft} for t in next_tasks)


def test_a_round_whose_policy_loses_keeps_sft_for_the_next_candidates(loop_project, transactional_db, eager,
                                                                     monkeypatch, client_for, users):
    def losing_evaluation(job, out, progress):  # as if PPO had learned to please its RM and nothing else
        return stages.StageOutcome("completed", {k.removeprefix("summary/"): v for k, v in LOSING.items()})

    monkeypatch.setitem(stages.RUNNERS, "evaluate", losing_evaluation)
    label_everything(loop_project)
    round1 = rounds.start_round(project=loop_project, config={**TINY_ROUND, "gate": True})
    round1.refresh_from_db()
    loop_project.refresh_from_db()
    ppo = TrainingJob.objects.get(round=round1, stage="ppo").result_model
    sft = TrainingJob.objects.get(round=round1, stage="sft").result_model
    assert round1.status == "finished" and loop_project.active_policy == sft
    assert f"The round's SFT model ({sft}) scored best" in round1.gate_note
    assert round1.comparison["ppo_vs_sft/rm_diff"] == -0.18
    generate = TrainingJob.objects.get(round=round1, stage="generate")
    assert list(generate.input_models.all()) == [sft]          # "ppo" and "sft" both resolve to SFT
    next_tasks = Task.objects.filter(round=Round.objects.get(project=loop_project, number=2), kind="ranking")
    assert next_tasks.exists() and all({c.model_version for c in t.candidates.all()} == {sft} for t in next_tasks)
    assert ppo not in {c.model_version for t in next_tasks for c in t.candidates.all()}
    assert client_for("sam").get(f"/api/rounds/{round1.pk}/").json()["gate_note"] == round1.gate_note


def test_a_second_round_whose_sft_beats_both_policies_makes_that_sft_active(loop_project, transactional_db, eager,
                                                                          monkeypatch):
    """Regression (session 6's closed loop): round 2's PPO lost to round 2's SFT, which also beat the round-1
    policy it was trained from; the gate kept the round-1 policy all the same."""
    label_everything(loop_project)
    round1 = rounds.start_round(project=loop_project, config={**TINY_ROUND, "gate": False})
    loop_project.refresh_from_db()
    policy1 = TrainingJob.objects.get(round=round1, stage="ppo").result_model
    assert loop_project.active_policy == policy1

    def round_2_evaluation(job, out, progress):  # the evaluation of session 6's round 2, as the worker reports it
        assert job.config["models"]["previous"] == policy1.pk
        return stages.StageOutcome("completed", {k.removeprefix("summary/"): v for k, v in ROUND_2.items()})

    monkeypatch.setitem(stages.RUNNERS, "evaluate", round_2_evaluation)
    label_everything(loop_project)
    round2 = rounds.start_round(project=loop_project, config={**TINY_ROUND, "gate": True})
    round2.refresh_from_db()
    loop_project.refresh_from_db()
    sft2 = TrainingJob.objects.get(round=round2, stage="sft").result_model
    assert round2.status == "finished" and loop_project.active_policy == sft2
    assert f"The previous policy ({policy1}) against SFT: -0.054" in round2.gate_note
    assert list(TrainingJob.objects.get(round=round2, stage="generate").input_models.all()) == [sft2]
