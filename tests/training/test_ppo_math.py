"""PPO's formulas against hand-computed values (worked examples with padding and different lengths)."""
from __future__ import annotations

import math

import pytest
import torch

from training.kl import KLController, update_from_all_ranks
from training.ppo import (
    entropy_from_logits,
    gae,
    kl_penalized_rewards,
    masked_whiten,
    policy_loss,
    ptx_batch_rows,
    value_loss,
)

# Two sequences: the first has 3 response tokens, the second 2 and one padding position.
LOGPROBS = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.0, -7.0]])
REF = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, -1.0, 4.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
SCORES = torch.tensor([2.0, -1.0])


def test_kl_penalized_rewards_put_the_score_on_the_last_valid_token():
    rewards = kl_penalized_rewards(LOGPROBS, REF, SCORES, MASK, kl_coef=0.1)
    # row 0: −0.1·(−1.0+1.5), −0.1·(−2.0+1.0), 0 + 2.0 ; row 1: −0.1·0.5, 0 + (−1.0), padding 0
    expected = torch.tensor([[-0.05, 0.1, 2.0], [-0.05, -1.0, 0.0]])
    assert torch.allclose(rewards, expected)


def test_kl_penalized_rewards_clip_the_score():
    rewards = kl_penalized_rewards(LOGPROBS, REF, torch.tensor([5.0, -9.0]), MASK, kl_coef=0.1, score_clip=1.5)
    assert torch.allclose(rewards[:, :2], torch.tensor([[-0.05, 0.1], [-0.05, -1.5]]))
    assert rewards[0, 2].item() == pytest.approx(1.5)


def test_kl_penalized_rewards_ignore_padding_log_probs():
    wild = LOGPROBS.clone()
    wild[1, 2] = 1e6
    assert torch.equal(kl_penalized_rewards(wild, REF, SCORES, MASK, 0.1),
                       kl_penalized_rewards(LOGPROBS, REF, SCORES, MASK, 0.1))


def test_gae_matches_hand_computation_and_never_bootstraps_from_padding():
    rewards = torch.tensor([[-0.05, 0.1, 2.0], [-0.05, -1.0, 0.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [0.2, -0.4, 9.9]])  # 9.9 sits on padding: must not leak
    advantages, returns = gae(rewards, values, MASK, gamma=1.0, lam=0.9)
    # row 0: δ2 = 2.0 − 1.5 = 0.5; δ1 = 0.1 + 1.5 − 1.0 = 0.6 → A1 = 0.6 + 0.9·0.5 = 1.05;
    #        δ0 = −0.05 + 1.0 − 0.5 = 0.45 → A0 = 0.45 + 0.9·1.05 = 1.395
    # row 1: δ1 = −1.0 + 0 − (−0.4) = −0.6 (no bootstrap); δ0 = −0.05 − 0.4 − 0.2 = −0.65 → A0 = −0.65 − 0.54
    expected = torch.tensor([[1.395, 1.05, 0.5], [-1.19, -0.6, 0.0]])
    assert torch.allclose(advantages, expected, atol=1e-6)
    assert torch.allclose(returns, expected + values, atol=1e-6)


def test_gae_with_discount():
    rewards = torch.tensor([[0.0, 1.0]])
    values = torch.tensor([[0.2, 0.4]])
    advantages, _ = gae(rewards, values, torch.tensor([[1, 1]]), gamma=0.5, lam=0.5)
    # δ1 = 1 − 0.4 = 0.6 ; δ0 = 0 + 0.5·0.4 − 0.2 = 0 → A0 = 0 + 0.25·0.6 = 0.15
    assert torch.allclose(advantages, torch.tensor([[0.15, 0.6]]))


def test_whitening_uses_only_valid_tokens():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    whitened = masked_whiten(values, mask)
    std = math.sqrt(5 / 3)  # valid 1, 2, 3, 4: mean 2.5, unbiased variance 5/3
    expected = torch.tensor([[-1.5 / std, -0.5 / std, 0.5 / std], [1.5 / std, 0.0, 0.0]])
    assert torch.allclose(whitened, expected, atol=1e-5)


def test_clipped_policy_loss_matches_hand_computation():
    old = torch.zeros(1, 5)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.5, 40.0]]))
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1000.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # the wild last token is padding
    loss, clipfrac, approx_kl = policy_loss(new, old, advantages, mask, cliprange=0.2)
    # per token max(−Aρ, −A·clip(ρ)): max(−1.5, −1.2) = −1.2 (clipped), max(−0.5, −0.8) = −0.5,
    # max(1.1, 1.1) = 1.1, max(0.5, 0.8) = 0.8 (clipped) → mean 0.05, clip fraction 2/4
    assert loss.item() == pytest.approx(0.05, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)
    logs = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.5]))
    assert approx_kl.item() == pytest.approx(float((0.5 * logs ** 2).mean()), rel=1e-5)


def test_clipped_value_loss_matches_hand_computation():
    values, old = torch.tensor([[1.0, 2.0, 50.0]]), torch.tensor([[0.5, 2.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    loss, clipfrac = value_loss(values, old, returns, torch.tensor([[1, 1, 0]]), cliprange_value=0.2)
    # V_clip = 0.5 + 0.2 = 0.7: max((1−2)², (0.7−2)²) = 1.69 ; max(1, 1) = 1 → ½·(1.69 + 1)/2
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_entropy_of_a_uniform_distribution_is_log_v():
    assert entropy_from_logits(torch.zeros(2, 8)).tolist() == pytest.approx([math.log(8)] * 2)


def test_adaptive_kl_controller_moves_beta_towards_the_target():
    fixed = KLController(0.1)
    fixed.update(kl=50.0, n_sequences=16)
    assert fixed.value == 0.1
    high = KLController(0.1, adaptive=True, target=6.0, horizon=1000)
    high.update(kl=12.0, n_sequences=16)   # error clipped to +0.2
    assert high.value == pytest.approx(0.1 * (1 + 0.2 * 16 / 1000))
    low = KLController(0.1, adaptive=True, target=6.0, horizon=1000)
    low.update(kl=4.5, n_sequences=100)    # error −0.25 → clipped to −0.2
    assert low.value == pytest.approx(0.1 * (1 - 0.2 * 100 / 1000))


def test_under_ddp_beta_moves_on_the_mean_kl_over_all_ranks_sequences():
    # This rank saw 4 sequences with mean KL 5.0; the other rank 4 with mean KL 8.0 (an all-reduce adds its
    # [KL × n, n]): the mean over the 8 sequences is 6.5, an error of 6.5/6 − 1 = 1/12.
    def all_sum(values: list[float]) -> list[float]:
        return [mine + other for mine, other in zip(values, [8.0 * 4, 4.0], strict=True)]

    controller = KLController(0.1, adaptive=True, target=6.0, horizon=1000)
    assert update_from_all_ranks(controller, kl=5.0, n_sequences=4, all_sum=all_sum) == pytest.approx(6.5)
    assert controller.value == pytest.approx(0.1 * (1 + (1 / 12) * 8 / 1000))


def test_in_one_process_beta_moves_on_its_own_kl():
    controller = KLController(0.1, adaptive=True, target=6.0, horizon=1000)
    update_from_all_ranks(controller, kl=12.0, n_sequences=16, all_sum=lambda values: values)
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 16 / 1000))


def test_the_ptx_stream_covers_each_pass_once_and_reshuffles_the_next():
    # 8 rows in batches of 3: two full batches per pass, the 2 rows left over are skipped.
    first_pass = ptx_batch_rows(8, 3, seed=1, index=0) + ptx_batch_rows(8, 3, seed=1, index=1)
    second_pass = ptx_batch_rows(8, 3, seed=1, index=2) + ptx_batch_rows(8, 3, seed=1, index=3)
    assert len(set(first_pass)) == 6 and len(set(second_pass)) == 6 and set(first_pass) <= set(range(8))
    assert first_pass != second_pass
    # A pure function of its arguments: asking again (as a resumed run does) gives the same batch.
    assert ptx_batch_rows(8, 3, seed=1, index=0) == first_pass[:3]


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep``: every position's logits, as older models give."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def _full_logit_reference(model, ids, attn, pos, n_prompt, temperature):
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, n_prompt - 1:-1] / temperature
    logp = logits.log_softmax(-1)
    return torch.gather(logp, 2, ids[:, n_prompt:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("wrapping", ["plain", "lora", "no_logits_to_keep"])
def test_response_log_probs_and_entropy_equal_the_full_logit_computation(wrapping):
    from training.config import RLOOConfig
    from training.models import TINY_BASE, add_lora, keeps_logits, load_causal_lm
    from training.ppo import sequence_logprobs

    torch.manual_seed(0)
    model = load_causal_lm(TINY_BASE, torch.device("cpu")).eval()
    if wrapping == "lora":
        model = add_lora(model, RLOOConfig(policy="-", lora=True, lora_r=4, lora_alpha=8)).eval()
    if wrapping == "no_logits_to_keep":
        model = _NoLogitsToKeep(model)
    assert keeps_logits(model) == (wrapping != "no_logits_to_keep")
    ids = torch.randint(2, 500, (3, 11))
    attn = torch.ones_like(ids)
    attn[0, :2] = 0  # a left-padded prompt
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    n_prompt = 5
    logprobs, entropy = sequence_logprobs(model, ids, attn, pos, n_prompt, 0.7, with_entropy=True, entropy_grad=False)
    expected_logprobs, expected_entropy = _full_logit_reference(model, ids, attn, pos, n_prompt, 0.7)
    assert logprobs.shape == entropy.shape == (3, 6)
    assert torch.allclose(logprobs, expected_logprobs, atol=1e-5)
    assert torch.allclose(entropy, expected_entropy, atol=1e-5)
    _, entropy_with_grad = sequence_logprobs(model, ids, attn, pos, n_prompt, 0.7, with_entropy=True)
    assert torch.allclose(entropy_with_grad, expected_entropy, atol=1e-5)
