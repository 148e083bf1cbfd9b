"""InstructGPT's k-way loss against hand-computed values."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from training.reward import batched_ranking_loss, pair_stats, ranking_loss


def nll(margin: float) -> float:
    """−log σ(margin), by hand."""
    return math.log(1 + math.exp(-margin))


def test_ranking_loss_of_one_pair_is_minus_log_sigmoid_of_the_margin():
    assert ranking_loss(torch.tensor([1.0, 0.0]), [1, 2]).item() == pytest.approx(0.31326169, abs=1e-7)
    assert ranking_loss(torch.tensor([1.0, 0.0]), [2, 1]).item() == pytest.approx(1.31326169, abs=1e-7)


def test_ranking_loss_averages_all_pairs_of_three():
    rewards = torch.tensor([2.0, 0.5, -1.0])
    expected = (nll(1.5) + nll(3.0) + nll(1.5)) / 3
    assert ranking_loss(rewards, [1, 2, 3]).item() == pytest.approx(expected, abs=1e-6)


def test_ranking_loss_skips_tied_pairs():
    rewards = torch.tensor([0.3, -0.2, 1.0])
    # ranks 1, 1, 2: the pair (0, 1) is a tie; only (0, 2) and (1, 2) count.
    expected = (nll(0.3 - 1.0) + nll(-0.2 - 1.0)) / 2
    assert ranking_loss(rewards, [1, 1, 2]).item() == pytest.approx(expected, abs=1e-6)


def test_ranking_loss_refuses_a_group_with_no_comparison():
    with pytest.raises(ValueError, match="same rank"):
        ranking_loss(torch.tensor([1.0, 2.0]), [1, 1])


@pytest.mark.parametrize("k", range(2, 10))
def test_ranking_loss_matches_the_explicit_pairwise_mean_for_k(k):
    generator = torch.Generator().manual_seed(k)
    rewards = torch.randn(k, generator=generator, dtype=torch.float64)
    ranks = [1 + i % (k - 1) for i in range(k)] if k > 2 else [2, 1]  # the last ties the first
    ranks = [sorted(set(ranks)).index(r) + 1 for r in ranks]
    pairs = [(i, j) for i, j in itertools.permutations(range(k), 2) if ranks[i] < ranks[j]]
    expected = sum(nll(float(rewards[i] - rewards[j])) for i, j in pairs) / len(pairs)
    assert ranking_loss(rewards, ranks).item() == pytest.approx(expected, abs=1e-9)
    if k == 9:
        assert len(pairs) < math.comb(9, 2)  # the ties were really skipped


def test_ranking_loss_weights_each_comparison():
    rewards = torch.tensor([1.0, 0.0, -1.0])
    weights = torch.tensor([[0, 3, 1], [3, 0, 1], [1, 1, 0]], dtype=torch.float32)
    expected = (3 * nll(1.0) + 1 * nll(2.0) + 1 * nll(1.0)) / 5
    assert ranking_loss(rewards, [1, 2, 3], weights).item() == pytest.approx(expected, abs=1e-6)


def test_batched_loss_equals_the_mean_of_explicit_pairwise_losses():
    generator = torch.Generator().manual_seed(0)
    groups = [[1, 2], [1, 1, 2], [3, 1, 2, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    rewards = torch.randn(len(groups), 9, generator=generator, dtype=torch.float64)
    ranks = torch.zeros(len(groups), 9, dtype=torch.long)
    for b, group in enumerate(groups):
        ranks[b, :len(group)] = torch.tensor(group)
    per_group = []
    for b, group in enumerate(groups):
        pairs = [(i, j) for i, j in itertools.permutations(range(len(group)), 2) if group[i] < group[j]]
        per_group.append(sum(nll(float(rewards[b, i] - rewards[b, j])) for i, j in pairs) / len(pairs))
    assert batched_ranking_loss(rewards, ranks).item() == pytest.approx(sum(per_group) / 4, abs=1e-9)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    expected = sum(w * v for w, v in zip(weights.tolist(), per_group, strict=True)) / 5.0
    assert batched_ranking_loss(rewards, ranks, weights).item() == pytest.approx(expected, abs=1e-9)
    # ... and each group's term is the public single-group function.
    assert ranking_loss(rewards[2, :4], groups[2]).item() == pytest.approx(per_group[2], abs=1e-9)


def test_batched_loss_ignores_padding_rewards():
    ranks = torch.tensor([[1, 2, 0, 0]])
    a = batched_ranking_loss(torch.tensor([[1.0, 0.0, 5.0, -5.0]]), ranks)
    b = batched_ranking_loss(torch.tensor([[1.0, 0.0, -9.0, 9.0]]), ranks)
    assert a.item() == b.item() == pytest.approx(nll(1.0), abs=1e-6)


def test_pair_stats_count_correct_order_and_margin():
    correct, pairs, margin = pair_stats(torch.tensor([[2.0, 1.0, 3.0]]), torch.tensor([[1, 2, 3]]))
    # pairs (0>1: +1 ok), (0>2: -1 wrong), (1>2: -2 wrong)
    assert (correct, pairs, margin) == (1.0, 3.0, -2.0)
