"""The reward model's "mean" pooling: the head reads the mean final state over the response's tokens (from
its first token to its end-of-turn marker), the same number whichever way the sequence is run: alone or
padded, with each prompt once, on cached frozen-layer states, after saving, and in PPO's rollout layout."""
from __future__ import annotations

import json

import pytest
import torch

from training.config import ConfigError, RewardConfig
from training.models import TINY_BASE, load_tokenizer
from training.reward import RewardModel, collate_rankings, group_rewards, score_pairs, train_reward_model

PAD = 0


def _rankings():
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(2, 400, (n,), generator=gen).tolist() for n in (9, 4, 13)]
    lengths = [(6, 2), (1, 8, 5), (7, 7)]
    return [([prompt + torch.randint(2, 400, (n,), generator=gen).tolist() for n in ns],
             list(range(1, len(ns) + 1)), 1.0, len(prompt)) for prompt, ns in zip(prompts, lengths, strict=True)]


def _mean_model(base=TINY_BASE) -> RewardModel:
    torch.manual_seed(0)
    model = RewardModel.from_pretrained(base).eval()
    model.pooling = "mean"
    torch.nn.init.normal_(model.head.weight, std=1.0)
    return model


def _by_hand(model: RewardModel, seq: list[int], start: int) -> float:
    """The definition: one unpadded pass, the head on the mean state of positions start..end."""
    with torch.no_grad():
        hidden = model.backbone(input_ids=torch.tensor([seq])).last_hidden_state[0]
        return float(model.head(hidden[start:].mean(dim=0)))


def test_mean_pooling_scores_the_mean_response_state_whatever_the_padding():
    model = _mean_model()
    groups = _rankings()
    batch = collate_rankings(groups, PAD)
    assert batch["response_start"].tolist() == [9, 9, 4, 4, 4, 13, 13]
    with torch.no_grad():
        rewards = group_rewards(model, batch)
    for b, (seqs, _, _, start) in enumerate(groups):
        for i, seq in enumerate(seqs):
            assert float(rewards[b, i]) == pytest.approx(_by_hand(model, seq, start), abs=1e-4)
    # The prompt's own states are not averaged in: "last" pooling of the same model gives other numbers.
    model.pooling = "last"
    with torch.no_grad():
        assert not torch.allclose(group_rewards(model, batch), rewards, atol=1e-3)


def test_mean_pooling_is_the_same_with_each_prompt_run_once():
    model = _mean_model()
    groups = _rankings()
    plain = collate_rankings(groups, PAD)
    shared = collate_rankings(groups, PAD, share_prefix=True)
    assert "row_group" in shared
    # A known prompt caps the shared prefix, so that the responses stay whole in the tails.
    assert shared["prefix_mask"].sum(1).tolist() == [9, 4, 13]
    with torch.no_grad():
        assert torch.allclose(group_rewards(model, shared), group_rewards(model, plain), atol=1e-5)


def test_mean_pooling_without_the_response_start_is_an_error_not_a_guess():
    model = _mean_model()
    batch = collate_rankings([(seqs, ranks, w) for seqs, ranks, w, _ in _rankings()], PAD)
    assert "response_start" not in batch
    with pytest.raises(ValueError, match="response_start"):
        group_rewards(model, batch)


def test_mean_pooling_on_cached_frozen_layers_equals_the_full_model(tiny_llama):
    from training.reward import cache_features

    model = _mean_model(tiny_llama)
    model.train_top(1)
    groups = _rankings()
    features = cache_features(model, groups, PAD)
    with torch.no_grad():
        cached = group_rewards(model, collate_rankings(groups, PAD, features))
        full = group_rewards(model, collate_rankings(groups, PAD))
    assert torch.allclose(cached, full, atol=1e-4)


def test_a_mean_pooled_reward_model_trains_saves_and_scores_the_same_after_loading(ranking_file, tmp_path):
    config = RewardConfig(base=TINY_BASE, device="cpu", max_length=64, batch_size=4, learning_rate=3e-3,
                          warmup_steps=0, max_steps=3, log_every=1, eval_fraction=0.0, seed=1, pooling="mean")
    result = train_reward_model(config, ranking_file, tmp_path / "rm")
    assert result.status == "completed"
    assert json.loads((tmp_path / "rm" / "reward_config.json").read_text())["pooling"] == "mean"
    loaded = RewardModel.from_pretrained(tmp_path / "rm").eval()
    assert loaded.pooling == "mean"
    tokenizer = load_tokenizer(tmp_path / "rm")
    pairs = [("Question 1?", "Good answer 1, with care."), ("Question 2? " * 5, "bad")]
    scores = score_pairs(loaded, tokenizer, pairs)
    from training.encoding import encode_pair

    for (prompt, response), score in zip(pairs, scores, strict=True):
        seq, start = encode_pair(tokenizer, prompt, response, max_length=512)
        assert score == pytest.approx(_by_hand(loaded, seq, start), abs=1e-4)


def test_an_unknown_pooling_is_refused():
    with pytest.raises(ConfigError, match="pooling"):
        RewardConfig(base="x", pooling="max")
    with pytest.raises(ValueError, match="pooling"):
        RewardModel(RewardModel.from_pretrained(TINY_BASE).backbone, pooling="first")


def test_head_only_trains_the_head_and_final_norm_on_cached_states_and_nothing_else(tiny_llama, ranking_file,
                                                                                     tmp_path):
    config = RewardConfig(base=str(tiny_llama), device="cpu", max_length=64, batch_size=4, learning_rate=1e-2,
                          warmup_steps=0, max_steps=6, log_every=1, eval_fraction=0.0, seed=1, head_only=True,
                          pooling="mean", normalize=False)
    result = train_reward_model(config, ranking_file, tmp_path / "rm")
    assert result.status == "completed" and result.summary["cache_seconds"] > 0
    before = RewardModel.from_pretrained(tiny_llama).state_dict()
    after = RewardModel.from_pretrained(tmp_path / "rm").state_dict()
    changed = {name for name in before if name.startswith("backbone.")
               and not torch.equal(before[name], after[name])}
    assert changed == {"backbone.norm.weight"}
    # Only the head and the final norm count as trainable.
    assert result.summary["trainable_parameters"] == 32 + 32 + 1
    with pytest.raises(ConfigError, match="head_only"):
        RewardConfig(base="x", head_only=True, lora=True)
