"""DPO's losses on k-way rankings against hand-computed values: Plackett–Luce with Breslow's ties, the
pairwise option, the exact reduction to DPO for k = 2, and padding for rankings of different k."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.dpo import listwise_dpo_loss, pairwise_dpo_loss

# β = 0.5, reference −2 everywhere: the implicit rewards are r = 0.5·(policy + 2) = [0.5, 1.0, −0.5].
POLICY = torch.tensor([-1.0, 0.0, -3.0])
REF = torch.tensor([-2.0, -2.0, -2.0])
BETA = 0.5


def lse(*values: float) -> float:
    return math.log(sum(math.exp(v) for v in values))


def nll(margin: float) -> float:
    """−log σ(margin), by hand."""
    return math.log(1 + math.exp(-margin))


def test_listwise_loss_of_three_without_ties_is_the_plackett_luce_likelihood():
    # Ranks [2, 1, 3]: response 1 is chosen from all three, then response 0 from {0, 2}, then 2 alone (log 1).
    expected = -(1.0 - lse(0.5, 1.0, -0.5)) - (0.5 - lse(0.5, -0.5))
    assert expected == pytest.approx(0.9173922928549512)
    assert listwise_dpo_loss(POLICY, REF, [2, 1, 3], BETA).item() == pytest.approx(expected, abs=1e-6)


def test_a_tie_at_the_top_chooses_each_member_against_its_group_and_everything_worse():
    # Ranks [1, 1, 2]: responses 0 and 1 are each chosen from all three; response 2 is left alone (log 1).
    expected = -(0.5 - lse(0.5, 1.0, -0.5)) - (1.0 - lse(0.5, 1.0, -0.5))
    assert expected == pytest.approx(1.7082612106734567)
    assert listwise_dpo_loss(POLICY, REF, [1, 1, 2], BETA).item() == pytest.approx(expected, abs=1e-6)


def test_a_tie_at_the_bottom_chooses_each_member_against_the_group():
    # Ranks [1, 2, 2]: response 0 from all three; then responses 1 and 2 each from {1, 2}.
    expected = -(0.5 - lse(0.5, 1.0, -0.5)) - (1.0 - lse(1.0, -0.5)) - (-0.5 - lse(1.0, -0.5))
    assert expected == pytest.approx(3.0069571613022332)
    assert listwise_dpo_loss(POLICY, REF, [1, 2, 2], BETA).item() == pytest.approx(expected, abs=1e-6)


def test_with_ties_the_loss_floor_is_the_groups_size_times_its_log():
    # Tied rewards equal and far above the rest: only the tied group's own terms are left, 2·log 2.
    policy = torch.tensor([10.0, 10.0, -50.0], dtype=torch.float64)
    loss = listwise_dpo_loss(policy, torch.zeros(3, dtype=torch.float64), [1, 1, 2], 1.0)
    assert loss.item() == pytest.approx(2 * math.log(2), abs=1e-12)


@pytest.mark.parametrize("loss_fn", [listwise_dpo_loss, pairwise_dpo_loss])
def test_for_two_responses_without_ties_both_losses_are_exactly_dpo(loss_fn):
    torch.manual_seed(0)
    policy, ref = torch.randn(6, 2, dtype=torch.float64) * 5, torch.randn(6, 2, dtype=torch.float64) * 5
    ranks = torch.tensor([[1, 2], [2, 1]] * 3)
    chosen = (ranks == 1).long().argmax(dim=1, keepdim=True)
    rejected = 1 - chosen
    log_ratio = policy - ref
    dpo = -F.logsigmoid(0.3 * (log_ratio.gather(1, chosen) - log_ratio.gather(1, rejected)).squeeze(1))
    assert torch.allclose(loss_fn(policy, ref, ranks, 0.3), dpo, rtol=0, atol=1e-12)


def test_pairwise_loss_is_the_mean_over_the_non_tied_pairs():
    assert pairwise_dpo_loss(POLICY, REF, [2, 1, 3], BETA).item() == pytest.approx(
        (nll(1.0 - 0.5) + nll(1.0 + 0.5) + nll(0.5 + 0.5)) / 3, abs=1e-6)
    # Ranks [1, 2, 2]: the pair (1, 2) is a tie and is skipped.
    assert pairwise_dpo_loss(POLICY, REF, [1, 2, 2], BETA).item() == pytest.approx(
        (nll(0.5 - 1.0) + nll(0.5 + 0.5)) / 2, abs=1e-6)


@pytest.mark.parametrize("loss_fn", [listwise_dpo_loss, pairwise_dpo_loss])
def test_a_padded_batch_gives_each_rankings_own_loss_and_padding_gets_no_gradient(loss_fn):
    nan = float("nan")  # padding may hold anything: it must not leak into a loss or a gradient
    policy = torch.tensor([[-1.0, 0.0, -3.0, nan], [0.2, -0.7, nan, nan]], requires_grad=True)
    ref = torch.tensor([[-2.0, -2.0, -2.0, nan], [0.0, 0.1, nan, nan]])
    ranks = torch.tensor([[1, 2, 2, 0], [2, 1, 0, 0]])
    losses = loss_fn(policy, ref, ranks, BETA)
    alone = [loss_fn(policy[0, :3].detach(), ref[0, :3], [1, 2, 2], BETA),
             loss_fn(policy[1, :2].detach(), ref[1, :2], [2, 1], BETA)]
    assert torch.allclose(losses, torch.stack(alone))
    losses.sum().backward()
    assert torch.isfinite(policy.grad).all()
    assert policy.grad[0, 3] == 0 and policy.grad[1, 2:].abs().sum() == 0


def test_listwise_loss_does_not_depend_on_the_order_responses_are_listed_in():
    order = [2, 0, 1]
    ranks = torch.tensor([1, 2, 2])
    assert listwise_dpo_loss(POLICY[order], REF[order], ranks[order], BETA).item() == pytest.approx(
        listwise_dpo_loss(POLICY, REF, ranks, BETA).item(), abs=1e-6)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="share a"):
        listwise_dpo_loss(POLICY, REF, [1, 2], BETA)
