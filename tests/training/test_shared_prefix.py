"""The shared-prefix layout: each ranking's prompt runs once and its k responses run on its KV cache, in
the reward model's and DPO's forward and backward. It must change nothing but the cost."""
from __future__ import annotations

import pytest
import torch

from training.config import DPOConfig, RewardConfig
from training.dpo import collate_dpo, response_logps
from training.models import TINY_BASE, add_lora, load_causal_lm
from training.reward import RewardModel, batched_ranking_loss, collate_rankings, group_rewards
from training.sft import IGNORE

PAD = 0


def _rankings():
    """Three rankings (k = 2, 3, 2) whose prompts differ in length; responses of different lengths."""
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(2, 400, (n,), generator=gen).tolist() for n in (9, 4, 13)]
    lengths = [(6, 2), (1, 8, 5), (7, 7)]
    return [([prompt + torch.randint(2, 400, (n,), generator=gen).tolist() for n in ns], len(prompt),
             list(range(1, len(ns) + 1)), 1.0) for prompt, ns in zip(prompts, lengths, strict=True)]


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:  # equal up to float rounding, tensor by tensor
        assert (a[name] - b[name]).abs().max() <= 1e-4 * b[name].abs().max() + 1e-7, name


def test_the_layout_holds_each_prompt_once_and_every_tail_keeps_a_token():
    groups = [(seqs, ranks, w) for seqs, _, ranks, w in _rankings()]
    batch = collate_rankings(groups, PAD, share_prefix=True)
    assert batch["prefix_ids"].shape[0] == 3 and batch["row_group"].tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert batch["prefix_mask"].sum(1).tolist()[0] >= 9  # at least the prompt: the common prefix
    # Group 1's shortest response has one token: the prefix stops before it, every tail keeps one.
    assert batch["prefix_mask"][1].sum() == 4 and batch["tail_mask"].sum(1).min() >= 1
    # Prefix + tail give back every sequence.
    rows = [s for seqs, *_ in groups for s in seqs]
    for row, seq in enumerate(rows):
        g = int(batch["row_group"][row])
        prefix = batch["prefix_ids"][g][batch["prefix_mask"][g].bool()].tolist()
        tail = batch["tail_ids"][row][batch["tail_mask"][row].bool()].tolist()
        assert prefix + tail == seq
    capped = collate_rankings(groups, PAD, share_prefix=[8, 4, 12])
    assert capped["prefix_mask"].sum(1).tolist() == [8, 4, 12]
    unrelated = collate_rankings([([[5, 6], [7, 8]], [1, 2], 1.0)], PAD, share_prefix=True)
    assert "row_group" not in unrelated  # nothing in common: the plain layout only
    assert "row_group" not in collate_rankings(groups, PAD)


def test_the_layout_is_left_out_where_padding_prefixes_and_tails_apart_would_cost_more():
    long_prompt = ([list(range(2, 40)) + [50], list(range(2, 40)) + [51, 52]], [1, 2], 1.0)
    long_answers = ([[3, 4] + list(range(60, 96)), [3, 4] + list(range(100, 137))], [1, 2], 1.0)
    # Apart: 2 prefixes of 38 + 4 tails of 37 = 224 positions against 4 rows of 40 = 160.
    assert "row_group" not in collate_rankings([long_prompt, long_answers], PAD, share_prefix=True)
    assert "row_group" in collate_rankings([long_prompt], PAD, share_prefix=True)  # 38 + 2 × 2 against 80


@pytest.mark.parametrize("lora", [False, True])
def test_rewards_and_gradients_are_the_same_when_each_prompt_runs_once(lora):
    torch.manual_seed(0)
    model = RewardModel.from_pretrained(TINY_BASE)
    torch.nn.init.normal_(model.head.weight, std=1.0)
    if lora:
        model.backbone = add_lora(model.backbone, RewardConfig(base="-", lora=True, lora_r=4, lora_alpha=8),
                                  task_type="FEATURE_EXTRACTION")
    model.train()
    groups = [(seqs, ranks, w) for seqs, _, ranks, w in _rankings()]
    results = []
    for share in (False, True):
        batch = collate_rankings(groups, PAD, share_prefix=share)
        assert ("row_group" in batch) == share
        model.zero_grad(set_to_none=True)
        rewards = group_rewards(model, batch)
        batched_ranking_loss(rewards, batch["ranks"], batch["weights"]).backward()
        grads = _grads(model)
        grads.pop("head.bias", None)  # the ranking loss does not depend on the bias: its gradient is ~0
        results.append((rewards.detach(), grads))
    (plain, plain_grads), (shared, shared_grads) = results
    assert torch.allclose(shared, plain, atol=1e-5)
    assert plain[plain != 0].std() > 0
    _assert_same_grads(shared_grads, plain_grads)


@pytest.mark.parametrize("lora", [False, True])
def test_dpo_log_probs_and_gradients_are_the_same_when_each_prompt_runs_once(lora):
    torch.manual_seed(0)
    model = load_causal_lm(TINY_BASE, torch.device("cpu"))
    if lora:
        model = add_lora(model, DPOConfig(base="-", lora=True, lora_r=4, lora_alpha=8))
    model.eval()
    batch = collate_dpo(_rankings(), PAD)
    assert "row_group" in batch
    # Only response tokens are labelled in the tails: as many as in the plain layout's labels.
    assert int((batch["tail_labels"] != IGNORE).sum()) == int((batch["labels"] != IGNORE).sum())
    results = []
    for share in (False, True):
        view = batch if share else {k: v for k, v in batch.items() if k != "row_group"}
        model.zero_grad(set_to_none=True)
        logps = response_logps(model, view)
        logps.sum().backward()
        results.append((logps.detach(), _grads(model)))
    (plain, plain_grads), (shared, shared_grads) = results
    assert torch.allclose(shared, plain, atol=1e-4)
    assert (plain[:, :2] < 0).all()
    _assert_same_grads(shared_grads, plain_grads)
