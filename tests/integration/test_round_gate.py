"""The round gate: the round's new PPO (or RLOO, or DPO) policy becomes the active policy unless its SFT model or
the previous active policy beats it on held-out prompts by more than two standard errors (then the better of
those does); the next round's candidates come from the active policy, and the round says why."""
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
# previous (round-1) policy both scored below the round-2 SFT model, which was trained from that previous policy,
# each by about one standard error. By the labelers' own score, PPO and SFT were level (+0.012 ± 0.042) and both
# beat the round-1 policy by 3.5 standard errors.
ROUND_2 = {"summary/prompts": 22, "summary/samples_per_prompt": 2,
           "summary/ppo_vs_sft/rm_diff": -0.066, "summary/ppo_vs_sft/rm_diff_stderr": 0.059,
           "summary/ppo_vs_sft/rm_win_rate": 0.432, "summary/previous_vs_sft/rm_diff": -0.054,
           "summary/previous_vs_sft/rm_diff_stderr": 0.072, "summary/previous_vs_sft/rm_win_rate": 0.409}

# The second round of the fourth run (session 7), by the training RM. By the labelers' own score the new PPO
# policy was the best model of the run, +0.146 ± 0.052 over the round-2 SFT model; the gate of that session
# picked SFT on this difference of 0.1 standard errors.
ROUND_2_S7 = {"summary/prompts": 22, "summary/samples_per_prompt": 2,
              "summary/ppo_vs_sft/rm_diff": -0.006, "summary/ppo_vs_sft/rm_diff_stderr": 0.052,
              "summary/ppo_vs_sft/rm_win_rate": 0.41, "summary/previous_vs_sft/rm_diff": -0.129,
              "summary/previous_vs_sft/rm_diff_stderr": 0.056, "summary/previous_vs_sft/rm_win_rate": 0.25,
              "summary/ppo_vs_previous/rm_diff": 0.123, "summary/ppo_vs_previous/rm_diff_stderr": 0.061,
              "summary/ppo_vs_previous/rm_win_rate": 0.68}

# A round whose new policy clearly lost to both others (by the direct pairings).
CLEAR_LOSS = {**LOSING, "summary/previous_vs_sft/rm_diff": -0.05, "summary/previous_vs_sft/rm_diff_stderr": 0.03,
              "summary/previous_vs_sft/rm_win_rate": 0.4, "summary/ppo_vs_previous/rm_diff": -0.13,
              "summary/ppo_vs_previous/rm_diff_stderr": 0.03, "summary/ppo_vs_previous/rm_win_rate": 0.2}

def test_a_policy_that_loses_to_sft_leaves_sft_active_when_there_is_no_previous_policy():
    kept, note = gate_decision(LOSING, gate=True, previous=None, sft=ModelVersion(name="round 1 SFT"))
    assert kept == "sft" and note == ("PPO against SFT on 100 held-out prompts, by the training RM: -0.180 ± 0.020 "
                                      "(win rate 13%). The round's SFT model (round 1 SFT) beats the new policy by "
                                      "more than 2 standard errors: it becomes the active policy and makes the next "
                                      "round's candidates.")
    kept, note = gate_decision(LOSING, gate=False, previous=None)
    assert kept == "new" and "The gate is off" in note
    kept, note = gate_decision({**LOSING, "summary/ppo_vs_sft/rm_diff": 0.3}, gate=True, previous=None)
    assert kept == "new" and note.endswith("SFT does not beat it by more than 2 standard errors: the new policy is "
                                           "active.")
    assert gate_decision({}, gate=True, previous=None)[0] == "new"


def test_a_policy_that_loses_by_less_than_two_standard_errors_stays_active():
    assert gate_decision({**LOSING, "summary/ppo_vs_sft/rm_diff": -0.039}, gate=True, previous=None)[0] == "new"
    assert gate_decision({**LOSING, "summary/ppo_vs_sft/rm_diff": -0.041}, gate=True, previous=None)[0] == "sft"


def test_the_gate_keeps_the_previous_policy_when_it_clearly_beats_both_new_models():
    previous = ModelVersion(name="round 1 PPO")
    kept, note = gate_decision(CLEAR_LOSS, gate=True, previous=previous)
    assert kept == "sft"  # both beat the new policy clearly; SFT scores higher than the previous policy
    better = {**CLEAR_LOSS, "summary/previous_vs_sft/rm_diff": 0.05}
    kept, note = gate_decision(better, gate=True, previous=previous)
    assert kept == "previous"
    assert note.endswith("The previous policy (round 1 PPO) against SFT: +0.050 ± 0.030 (win rate 40%). PPO against "
                         "the previous policy: -0.130 ± 0.030 (win rate 20%). The previous policy beats the new policy "
                         "by more than 2 standard errors: the round keeps it (round 1 PPO) for the next round's "
                         "candidates.")
    # The previous policy must beat the new one clearly, not just score higher.
    unclear = {**better, "summary/ppo_vs_previous/rm_diff": -0.05}
    assert gate_decision(unclear, gate=True, previous=previous)[0] == "sft"
    kept, _ = gate_decision({**unclear, "summary/ppo_vs_sft/rm_diff": -0.03}, gate=True, previous=previous)
    assert kept == "new"


def test_without_a_direct_pairing_the_previous_policy_is_judged_by_both_differences_from_sft():
    previous = ModelVersion(name="round 1 PPO")
    older = {k: v for k, v in CLEAR_LOSS.items() if "_vs_previous" not in k}  # an evaluation of an earlier version
    # previous − PPO = -0.05 + 0.18 = 0.13, standard error √(0.02² + 0.03²) = 0.036: clearly better
    assert gate_decision({**older, "summary/previous_vs_sft/rm_diff": 0.01}, gate=True, previous=previous)[0] == \
        "previous"
    # with wider standard errors the same difference is no evidence, and SFT's own is not either
    wide = {**older, "summary/previous_vs_sft/rm_diff": 0.01, "summary/previous_vs_sft/rm_diff_stderr": 0.1,
            "summary/ppo_vs_sft/rm_diff_stderr": 0.1}
    kept, note = gate_decision(wide, gate=True, previous=previous)
    assert kept == "new" and note.endswith("Neither SFT nor the previous policy beats it by more than 2 standard "
                                           "errors: the new policy is active.")


def test_the_gate_keeps_a_new_policy_that_loses_to_sft_by_noise_alone():
    """Regression (session 7's closed loop): the gate made the round-2 SFT model active because the training RM
    scored it 0.006 above the new PPO policy (0.1 standard errors); by the labelers' own score that PPO policy
    was the best model of the run. Session 6's round 2 (PPO 1.1 standard errors below SFT) is the same case."""
    previous, sft = ModelVersion(name="round 1 PPO"), ModelVersion(name="round 2 SFT")
    kept, note = gate_decision(ROUND_2_S7, gate=True, previous=previous, sft=sft)
    assert kept == "new"
    assert note == ("PPO against SFT on 22 held-out prompts × 2 samples, by the training RM: -0.006 ± 0.052 (win rate "
                    "41%). The previous policy (round 1 PPO) against SFT: -0.129 ± 0.056 (win rate 25%). PPO against "
                    "the previous policy: +0.123 ± 0.061 (win rate 68%). Neither SFT nor the previous policy beats it "
                    "by more than 2 standard errors: the new policy is active.")
    assert gate_decision(ROUND_2, gate=True, previous=previous, sft=sft)[0] == "new"


def test_the_gate_prefers_the_new_sft_model_to_a_previous_policy_that_scores_below_it():
    """Regression: the gate compared the new policy with SFT only and, when it lost, kept the previous policy
    even when the round's SFT model beat it (session 6's round 2: SFT +0.18 over the kept policy by the labelers'
    own score)."""
    clearly = {**ROUND_2, "summary/ppo_vs_sft/rm_diff": -0.15}
    kept, note = gate_decision(clearly, gate=True, previous=ModelVersion(name="round 1 PPO"),
                               sft=ModelVersion(name="round 2 SFT"))
    assert kept == "sft"
    assert note == ("PPO against SFT on 22 held-out prompts × 2 samples, by the training RM: -0.150 ± 0.059 (win rate "
                    "43%). The previous policy (round 1 PPO) against SFT: -0.054 ± 0.072 (win rate 41%). The round's "
                    "SFT model (round 2 SFT) beats the new policy by more than 2 standard errors: it becomes the "
                    "active policy and makes the next round's candidates.")


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
    assert "SFT model (SFT) beats the new policy" in note
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
    assert "beats the new policy by more than 2 standard errors: it becomes the active policy" in round1.gate_note
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
    assert f"The round's SFT model ({sft}) beats the new policy" in round1.gate_note
    assert round1.comparison["ppo_vs_sft/rm_diff"] == -0.18
    generate = TrainingJob.objects.get(round=round1, stage="generate")
    assert list(generate.input_models.all()) == [sft]          # "ppo" and "sft" both resolve to SFT
    next_tasks = Task.objects.filter(round=Round.objects.get(project=loop_project, number=2), kind="ranking")
    assert next_tasks.exists() and all({c.model_version for c in t.candidates.all()} == {sft} for t in next_tasks)
    assert ppo not in {c.model_version for t in next_tasks for c in t.candidates.all()}
    assert client_for("sam").get(f"/api/rounds/{round1.pk}/").json()["gate_note"] == round1.gate_note


def second_round(loop_project, monkeypatch, metrics: dict) -> tuple[Round, ModelVersion]:
    """Two real rounds on the tiny base; round 2's evaluation reports ``metrics``. Returns round 2 and the
    round-1 policy."""
    label_everything(loop_project)
    round1 = rounds.start_round(project=loop_project, config={**TINY_ROUND, "gate": False})
    loop_project.refresh_from_db()
    policy1 = TrainingJob.objects.get(round=round1, stage="ppo").result_model
    assert loop_project.active_policy == policy1

    def round_2_evaluation(job, out, progress):  # as the worker reports it
        assert job.config["models"]["previous"] == policy1.pk
        return stages.StageOutcome("completed", {k.removeprefix("summary/"): v for k, v in metrics.items()})

    monkeypatch.setitem(stages.RUNNERS, "evaluate", round_2_evaluation)
    label_everything(loop_project)
    round2 = rounds.start_round(project=loop_project, config={**TINY_ROUND, "gate": True})
    round2.refresh_from_db()
    loop_project.refresh_from_db()
    assert round2.status == "finished"
    return round2, policy1


def test_a_second_round_whose_sft_beats_both_policies_makes_that_sft_active(loop_project, transactional_db, eager,
                                                                          monkeypatch):
    """Regression (session 6's closed loop): round 2's SFT beat both the new PPO and the round-1 policy it was
    trained from; the gate kept the round-1 policy all the same."""
    metrics = {**ROUND_2, "summary/ppo_vs_sft/rm_diff": -0.15, "summary/ppo_vs_previous/rm_diff": -0.1,
               "summary/ppo_vs_previous/rm_diff_stderr": 0.06, "summary/ppo_vs_previous/rm_win_rate": 0.4}
    round2, policy1 = second_round(loop_project, monkeypatch, metrics)
    sft2 = TrainingJob.objects.get(round=round2, stage="sft").result_model
    assert loop_project.active_policy == sft2
    assert f"The previous policy ({policy1}) against SFT: -0.054" in round2.gate_note
    assert list(TrainingJob.objects.get(round=round2, stage="generate").input_models.all()) == [sft2]


def test_a_second_round_keeps_its_new_policy_when_sft_scores_level_with_it(loop_project, transactional_db, eager,
                                                                          monkeypatch):
    """Regression (session 7's closed loop): round 2's PPO policy, the run's best model by the labelers' score,
    scored 0.006 below round 2's SFT by the training RM (0.1 standard errors), and the gate made SFT active."""
    round2, policy1 = second_round(loop_project, monkeypatch, ROUND_2_S7)
    ppo2 = TrainingJob.objects.get(round=round2, stage="ppo").result_model
    assert loop_project.active_policy == ppo2 and ppo2 != policy1
    assert round2.gate_note.endswith("the new policy is active.")
    assert ppo2 in TrainingJob.objects.get(round=round2, stage="generate").input_models.all()
