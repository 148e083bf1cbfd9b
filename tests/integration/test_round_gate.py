"""The round gate: a PPO (or RLOO, or DPO) policy that loses to its SFT model on held-out prompts does not
become the active policy, the next round's candidates come from the policy kept, and the round says why."""
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


def test_the_gate_keeps_the_previous_policy_when_ppo_loses_to_sft():
    previous = ModelVersion(name="round 1 PPO")
    adopt, note = gate_decision(LOSING, gate=True, previous=previous)
    assert not adopt and note == ("PPO against SFT on 100 held-out prompts, by the training RM: -0.180 ± 0.020 "
                                  "(win rate 13%). It lost to SFT, so the round keeps the previous policy "
                                  "(round 1 PPO) for the next round's candidates.")
    assert "keeps the SFT model" in gate_decision(LOSING, gate=True, previous=None)[1]
    adopt, note = gate_decision(LOSING, gate=False, previous=None)
    assert adopt and "the gate is off" in note
    adopt, note = gate_decision({**LOSING, "summary/ppo_vs_sft/rm_diff": 0.3}, gate=True, previous=None)
    assert adopt and note.endswith("The new policy is active.")
    assert gate_decision({}, gate=True, previous=None)[0] is True


def test_the_note_says_how_many_samples_each_prompt_had():
    adopt, note = gate_decision({**LOSING, "summary/samples_per_prompt": 4}, gate=True, previous=None)
    assert not adopt and note.startswith("PPO against SFT on 100 held-out prompts × 4 samples, by the training RM")


def test_the_cpu_preset_compares_on_several_samples_per_prompt():
    assert validate_round_config({"preset": "cpu"})["evaluate"]["samples"] >= 2


def test_the_judge_decides_when_there_is_one():
    judged = {**LOSING, "summary/ppo_vs_sft/judge_diff": 0.1, "summary/ppo_vs_sft/judge_diff_stderr": 0.05,
              "summary/ppo_vs_sft/judge_win_rate": 0.6}
    adopt, note = gate_decision(judged, gate=True, previous=None)
    assert adopt and "by the judge: +0.100" in note


def on_path(metrics: dict, path: str) -> dict:
    return {k.replace("/ppo_vs_sft/", f"/{path}_vs_sft/"): v for k, v in metrics.items()}


def test_the_gate_judges_an_rloo_or_dpo_policy_as_a_ppo_one():
    adopt, note = gate_decision(on_path(LOSING, "rloo"), gate=True, previous=None, policy="rloo")
    assert not adopt and note.startswith("RLOO against SFT on 100 held-out prompts, by the training RM: -0.180")
    assert "keeps the SFT model" in note
    adopt, note = gate_decision(on_path(LOSING, "dpo"), gate=True, previous=None, policy="dpo",
                                scorer="the RM of round 1")
    assert not adopt and note.startswith("DPO against SFT on 100 held-out prompts, by the RM of round 1: -0.180")
    # A PPO policy's numbers say nothing about a DPO round's policy.
    assert gate_decision(LOSING, gate=True, previous=None, policy="dpo")[0] is True


def test_a_dpo_policy_with_nothing_to_score_it_passes_and_the_note_says_why():
    adopt, note = gate_decision({"summary/scorers": 0}, gate=True, previous=None, policy="dpo")
    assert adopt and note == ("Nothing to score DPO against SFT with (no reward model yet and no judge on the "
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
    assert round1.status == "finished" and loop_project.active_policy is None and policy.stage == path
    assert f"{path.upper()} against SFT" in round1.gate_note and "so the round keeps the SFT model" in round1.gate_note
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
    assert round1.status == "finished" and loop_project.active_policy is None
    assert "It lost to SFT, so the round keeps the SFT model" in round1.gate_note
    assert round1.comparison["ppo_vs_sft/rm_diff"] == -0.18
    generate = TrainingJob.objects.get(round=round1, stage="generate")
    assert list(generate.input_models.all()) == [sft]          # "ppo" and "sft" both resolve to SFT
    next_tasks = Task.objects.filter(round=Round.objects.get(project=loop_project, number=2), kind="ranking")
    assert next_tasks.exists() and all({c.model_version for c in t.candidates.all()} == {sft} for t in next_tasks)
    assert ppo not in {c.model_version for t in next_tasks for c in t.candidates.all()}
    assert client_for("sam").get(f"/api/rounds/{round1.pk}/").json()["gate_note"] == round1.gate_note
