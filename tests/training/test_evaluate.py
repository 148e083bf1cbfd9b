"""Comparing policies on held-out prompts: statistics against hand values, KL, scores and the summary."""
from __future__ import annotations

import json

import pytest
import torch

from tests.training.conftest import write_jsonl
from training.config import ConfigError, EvaluateConfig
from training.evaluate import SAMPLES_FILE, comparisons, evaluate_policies, mean_stderr, paired


def test_mean_and_standard_error_match_hand_computation():
    mean, stderr = mean_stderr([1.0, 2.0, 3.0, 6.0])
    # mean 3; sample variance ((4 + 1 + 0 + 9) / 3) = 14/3; stderr = √(14/3 / 4)
    assert mean == 3.0 and stderr == pytest.approx((14 / 3 / 4) ** 0.5)
    assert mean_stderr([5.0]) == (5.0, 0.0)


def test_paired_differences_and_win_rate_match_hand_computation():
    result = paired([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 4.0, 2.0])
    # diffs 1, 0, −1, 2: mean 0.5; variance (0.25 + 0.25 + 2.25 + 2.25) / 3 = 5/3; wins 1 + ½ + 0 + 1 of 4
    assert result["diff"] == 0.5 and result["diff_stderr"] == pytest.approx((5 / 3 / 4) ** 0.5)
    assert result["win_rate"] == 0.625


@pytest.fixture
def held_out(tmp_path):
    topics = ["the sea", "bread", "a bird", "the rain", "music", "snow"]
    return write_jsonl(tmp_path / "held_out.jsonl",
                       [{"version": 1, "id": str(i), "prompt": f"Tell me about {t}."} for i, t in enumerate(topics)])


@pytest.fixture
def models(tiny_base, tmp_path):
    """The tiny base, a perturbed copy of it (another policy), and a reward model built on it."""
    from training.models import load_causal_lm, load_tokenizer
    from training.reward import RewardModel

    other = tmp_path / "other"
    model = load_causal_lm(tiny_base)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(other)
    load_tokenizer(tiny_base).save_pretrained(other)
    rm = tmp_path / "rm"
    torch.manual_seed(0)
    RewardModel.from_pretrained(tiny_base).save_pretrained(rm, load_tokenizer(tiny_base))
    return {"base": str(tiny_base), "other": str(other), "rm": str(rm)}


def test_a_policy_against_itself_has_no_kl_no_difference_and_half_the_wins(models, held_out, tmp_path):
    config = EvaluateConfig(policies=[models["base"], models["base"]], names=["a", "b"], baseline="b",
                            reference=models["base"], reward_model=models["rm"], judge=models["rm"],
                            max_new_tokens=8, device="cpu")
    result = evaluate_policies(config, held_out, tmp_path / "out")
    s = result.summary
    assert result.status == "completed" and s["prompts"] == 6
    assert abs(s["a/kl"]) < 1e-4 and s["a/rm"] == pytest.approx(s["b/rm"])
    assert s["a_vs_b/rm_diff"] == pytest.approx(0.0) and s["a_vs_b/rm_win_rate"] == 0.5
    assert s["a_vs_b/judge_win_rate"] == 0.5 and 0 < s["a/length"] <= 8
    rows = [json.loads(line) for line in (tmp_path / "out" / SAMPLES_FILE).read_text().splitlines()]
    assert len(rows) == 6 and set(rows[0]) == {"prompt", "a", "b"} and "rm" in rows[0]["a"][0]


def test_several_samples_per_prompt_are_averaged_per_prompt_before_the_statistics(models, held_out, tmp_path):
    config = EvaluateConfig(policies=[models["other"], models["base"]], names=["other", "base"], baseline="base",
                            reward_model=models["rm"], max_new_tokens=8, samples=3, device="cpu")
    s = evaluate_policies(config, held_out, tmp_path / "out").summary
    rows = [json.loads(line) for line in (tmp_path / "out" / SAMPLES_FILE).read_text().splitlines()]
    assert s["samples_per_prompt"] == 3 and all(len(row[n]) == 3 for row in rows for n in ("other", "base"))
    means = {n: [sum(c["rm"] for c in row[n]) / 3 for row in rows] for n in ("other", "base")}
    assert s["other/rm"] == pytest.approx(sum(means["other"]) / 6)
    diffs = [a - b for a, b in zip(means["other"], means["base"], strict=True)]
    assert s["other_vs_base/rm_diff"] == pytest.approx(sum(diffs) / 6)
    assert s["other_vs_base/rm_diff_stderr"] == pytest.approx(mean_stderr(diffs)[1])
    texts = {tuple(c["text"] for c in row["base"]) for row in rows}
    assert any(len(set(t)) > 1 for t in texts)  # the samples of a prompt differ (three draws, not one)


def test_another_policy_has_a_positive_kl_to_the_reference(models, held_out, tmp_path):
    config = EvaluateConfig(policies=[models["other"], models["base"]], names=["other", "base"], baseline="base",
                            reference=models["base"], reward_model=models["rm"], max_new_tokens=8, device="cpu")
    s = evaluate_policies(config, held_out, tmp_path / "out").summary
    assert s["other/kl"] > 0.01 and abs(s["base/kl"]) < 1e-4
    assert "other_vs_base/rm_diff" in s and "other_vs_base/judge_diff" not in s
    assert 0.0 <= s["other/eos_rate"] <= s["other/ended_rate"] <= 1.0


def test_every_policy_is_paired_with_the_baseline_and_then_with_each_other_directly():
    assert comparisons(["ppo", "sft", "previous"], "sft") == [("ppo", "sft"), ("previous", "sft"), ("ppo", "previous")]
    assert comparisons(["a", "b", "c", "d"], "a") == [("b", "a"), ("c", "a"), ("d", "a"), ("b", "c"), ("b", "d"),
                                                        ("c", "d")]
    assert comparisons(["a", "b"], "") == []


def test_two_policies_other_than_the_baseline_are_paired_prompt_by_prompt(models, held_out, tmp_path):
    config = EvaluateConfig(policies=[models["other"], models["base"], models["base"]], names=["new", "sft", "old"],
                            baseline="sft", reward_model=models["rm"], max_new_tokens=8, samples=2, device="cpu")
    s = evaluate_policies(config, held_out, tmp_path / "out").summary
    rows = [json.loads(line) for line in (tmp_path / "out" / SAMPLES_FILE).read_text().splitlines()]
    means = {n: [sum(c["rm"] for c in row[n]) / 2 for row in rows] for n in ("new", "old")}
    assert {k: s[f"new_vs_old/rm_{k}"] for k in ("diff", "diff_stderr", "win_rate")} == pytest.approx(
        paired(means["new"], means["old"]))
    # the direct pairing's standard error is that of the per-prompt differences, not a sum of the two others
    assert s["new_vs_old/rm_diff"] == pytest.approx(s["new_vs_sft/rm_diff"] - s["old_vs_sft/rm_diff"])


def test_the_config_says_what_is_missing():
    with pytest.raises(ConfigError, match="one name per policy"):
        EvaluateConfig(policies=["a"], names=[], reward_model="rm")
    with pytest.raises(ConfigError, match="reward model or a judge"):
        EvaluateConfig(policies=["a"], names=["a"])
    with pytest.raises(ConfigError, match="samples"):
        EvaluateConfig(policies=["a"], names=["a"], reward_model="rm", samples=0)
    with pytest.raises(ConfigError, match="baseline"):
        EvaluateConfig(policies=["a"], names=["a"], baseline="z", reward_model="rm")
