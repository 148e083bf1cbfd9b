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


def _grouped_rows(group: int, n_prompt: int, n_response: int):
    """Two prompts (one left-padded), each repeated ``group`` times in consecutive rows, with different
    responses, two of them right-padded after an early end."""
    torch.manual_seed(1)
    prompts = torch.randint(2, 500, (2, n_prompt))
    prompt_mask = torch.ones_like(prompts)
    prompt_mask[0, :2] = 0
    ids = torch.cat([prompts.repeat_interleave(group, 0), torch.randint(2, 500, (2 * group, n_response))], 1)
    attn = torch.cat([prompt_mask.repeat_interleave(group, 0), torch.ones(2 * group, n_response, dtype=torch.long)], 1)
    attn[1, -3:] = 0
    attn[2 * group - 1, -1:] = 0
    return ids, attn, (attn.cumsum(1) - 1).clamp(min=0)


@pytest.mark.parametrize("wrapping", ["plain", "lora"])
def test_rows_that_share_a_prompt_give_the_same_log_probs_and_gradients_when_the_prompt_runs_once(wrapping):
    from training.config import RLOOConfig
    from training.models import TINY_BASE, add_lora, load_causal_lm
    from training.ppo import sequence_logprobs

    model = load_causal_lm(TINY_BASE, torch.device("cpu")).eval()
    if wrapping == "lora":
        model = add_lora(model, RLOOConfig(policy="-", lora=True, lora_r=4, lora_alpha=8)).eval()
    group, n_prompt = 3, 6
    ids, attn, pos = _grouped_rows(group, n_prompt, 7)
    mask = attn[:, n_prompt:].bool()
    results = []
    for g in (1, group):
        model.zero_grad(set_to_none=True)
        logprobs, entropy = sequence_logprobs(model, ids, attn, pos, n_prompt, 0.7, with_entropy=True, group=g)
        (logprobs * mask).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((logprobs.detach(), entropy.detach(), grads))
    (row_lp, row_ent, row_grads), (group_lp, group_ent, group_grads) = results
    assert torch.allclose(group_lp[mask], row_lp[mask], atol=1e-5)
    assert torch.allclose(group_ent[mask], row_ent[mask], atol=1e-5)
    for a, b in zip(group_grads, row_grads, strict=True):  # equal up to float rounding, tensor by tensor
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-7
    assert any(g.abs().sum() > 0 for g in group_grads)  # the gradient is not trivially zero on both sides


def test_shared_prompts_are_detected_only_where_the_rows_really_repeat_them():
    from training.ppo import shares_prompts

    ids, attn, _ = _grouped_rows(3, 6, 4)
    assert shares_prompts(ids, attn, 6, 3)
    assert not shares_prompts(ids, attn, 6, 2)  # 6 rows in pairs: rows 2 and 3 hold different prompts
    assert not shares_prompts(ids, attn, 6, 4)  # not a whole number of groups
    assert not shares_prompts(ids, attn, 6, 1)
    changed = attn.clone()
    changed[1, 1] = 1  # the same tokens, but one row's prompt padding differs
    assert not shares_prompts(ids, changed, 6, 3)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_reward_model_scores_equal_row_by_row_when_each_prompt_runs_once(pooling):
    from training.models import TINY_BASE, load_causal_lm
    from training.ppo import reward_model_scores
    from training.reward import RewardModel

    reward_model = RewardModel(load_causal_lm(TINY_BASE, torch.device("cpu")).base_model, pooling=pooling).eval()
    torch.nn.init.normal_(reward_model.head.weight, std=1.0)
    group, n_prompt = 3, 6
    ids, attn, pos = _grouped_rows(group, n_prompt, 7)
    last = n_prompt + attn[:, n_prompt:].sum(1) - 1
    row_by_row = reward_model_scores(reward_model, ids, attn, pos, last, n_prompt=n_prompt)
    grouped = reward_model_scores(reward_model, ids, attn, pos, last, group, n_prompt=n_prompt)
    assert torch.allclose(grouped, row_by_row, atol=1e-5)
    assert row_by_row.std() > 0  # different responses, different scores


def test_sampling_k_responses_per_prompt_reads_each_prompt_once_and_samples_the_same_tokens():
    from training.config import RLOOConfig
    from training.models import TINY_BASE, load_causal_lm, load_tokenizer
    from training.ppo import sample_responses

    model = load_causal_lm(TINY_BASE, torch.device("cpu")).eval()
    tokenizer = load_tokenizer(TINY_BASE)
    config = RLOOConfig(policy=TINY_BASE, max_new_tokens=8, temperature=1.0, k=3)
    prompts = [[5, 6, 7, 8], [9, 10]]
    repeated = [p for p in prompts for _ in range(3)]
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
    outputs = {}
    for group in (1, 3):
        calls.clear()
        outputs[group] = sample_responses(model, tokenizer, repeated, config, torch.Generator().manual_seed(0), group)
        outputs[f"first call {group}"] = calls[0]
    hook.remove()
    assert outputs["first call 1"] == (6, 4) and outputs["first call 3"] == (2, 4)  # the prompts, once each
    (ids1, _, _, _, mask1, lp1, end1), (ids3, _, _, _, mask3, lp3, end3) = outputs[1], outputs[3]
    assert torch.equal(ids1, ids3) and torch.equal(mask1, mask3) and torch.equal(end1, end3)
    assert torch.allclose(lp1, lp3, atol=1e-5)


def test_the_optimizer_is_fused_on_cpu_and_steps_as_the_default_adamw_does():
    from training.loop import adamw

    torch.manual_seed(0)
    weights = [torch.randn(4, 3), torch.randn(3)]
    grads = [torch.randn(4, 3), torch.randn(3)]
    stepped = []
    for make in (lambda ps: adamw(ps, lr=0.1, betas=(0.9, 0.95)),
                 lambda ps: torch.optim.AdamW(ps, lr=0.1, betas=(0.9, 0.95), foreach=False)):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        optimizer = make(params)
        for _ in range(3):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
        stepped.append(([p.detach() for p in params], optimizer.defaults.get("fused")))
    (fused_params, fused), (plain_params, _) = stepped
    assert fused is True
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fused_params, plain_params, strict=True))
    assert not torch.allclose(fused_params[0], weights[0])
