"""PPO against a reward model under a per-token KL penalty to the SFT policy (InstructGPT's third stage;
Ziegler et al. 2019, Stiennon et al. 2020, Ouyang et al. 2022).

One iteration:
1. **Rollout.** Sample a batch of prompts and generate responses with the KV cache. The sampling-time
   log-probs (of logits / temperature) are kept as the behaviour policy's; the reference forward, the
   critic's values and the reward model's score are each computed once, without gradients.
2. **Rewards.** r_t = −β (log π(a_t) − log π_ref(a_t)) on every response token, plus the (clipped) score
   at the last response token (its EOS, or the last token when the response hit the length limit).
3. **Advantages.** GAE(γ, λ) over response tokens, never bootstrapping from padding; returns = A + V.
   Advantages are whitened over valid tokens before the policy loss.
4. **Optimisation.** ``ppo_epochs`` passes over the rollout in minibatches: the clipped surrogate (ε),
   the clipped value loss (ε_v), an optional entropy bonus and optional PPO-ptx (γ_ptx × LM loss on
   SFT/pretraining batches), with gradient clipping. β is fixed or follows the adaptive controller
   (``training.kl``), which under DDP moves on the mean KL over all ranks.

Every model stays in eval mode for the whole run (see ``_without_dropout``), and the checkpoint holds the
position of the PPO-ptx stream, so a resumed run equals an uninterrupted one.

The math is small pure functions at the top of this file, each tested against hand-computed values.
"""
from __future__ import annotations

import copy
import functools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from training.config import GenerateConfig, PPOConfig, RLOOConfig
from training.data import PPOPrompt, read_ppo_prompts, read_sft, render_plain, write_jsonl
from training.encoding import encode_pair, encode_prompt, fit_prompt
from training.generate import cut_at_stop, process_logits, stop_rules
from training.kl import KLController, update_from_all_ranks
from training.loop import adamw
from training.models import (
    add_lora,
    cache_keyword,
    count_parameters,
    keeps_logits,
    load_causal_lm,
    load_tokenizer,
    prefix_cache,
    prefix_shared_passes,
    returned_cache,
    save_pretrained,
    shares_prefixes,
    tail_token_logits,
    train_top_layers,
)
from training.reporting import OnLog, Reporter, ShouldStop, StageResult, never_stop, no_log
from training.reward import RewardModel
from training.runtime import init_runtime, seed_all, unwrap, wrap

CHECKPOINT = Path("checkpoints") / "last.pt"
SAMPLES_FILE = "samples.jsonl"

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
"""A reward callable: (rendered prompts, responses) → one score per response."""


# --- math: small pure functions -------------------------------------------------------------------

def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − mean) / std over the entries where ``mask`` is 1 (unbiased variance); padding stays 0."""
    mask = mask.to(values.dtype)
    n = mask.sum()
    mean = (values * mask).sum() / n.clamp(min=1)
    var = (((values - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalized_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float, score_clip: float | None = None) -> torch.Tensor:
    """[B, T] per-token rewards: −β (log π − log π_ref) on each valid response token, plus the score
    (clipped to [−score_clip, score_clip] when given) on the last valid token of each row.

    ``mask`` is 1 on real response tokens and 0 on the padding after each response's end.
    """
    mask = mask.to(logprobs.dtype)
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    if score_clip:
        scores = scores.clamp(-score_clip, score_clip)
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rows = torch.arange(rewards.size(0), device=rewards.device)
    has_tokens = mask.sum(dim=1) > 0
    scores = scores.to(rewards.dtype)
    rewards[rows, last] += torch.where(has_tokens, scores, torch.zeros_like(scores))
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens: (advantages, returns), each [B, T], with
    returns = advantages + values. After a row's last valid token the next value is 0: padding is never
    bootstrapped from, and masked positions get advantage 0."""
    mask = mask.to(values.dtype)
    steps = rewards.size(1)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_mask = mask[:, t + 1] if t + 1 < steps else torch.zeros_like(mask[:, 0])
        next_value = values[:, t + 1] * next_mask if t + 1 < steps else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running * next_mask
        advantages[:, t] = running * mask[:, t]
    return advantages, advantages + values


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: mean over valid tokens of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), with
    ρ = exp(log π − log π_old). Returns (loss, clip fraction, approx KL = mean ½(log ρ)²)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    approx_kl = masked_mean(0.5 * log_ratio ** 2, mask)
    return loss, clipfrac.detach(), approx_kl.detach()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss: ½ mean over valid tokens of max((V − R)², (V_clip − R)²), with
    V_clip = V_old + clip(V − V_old, −ε_v, ε_v). Returns (loss, value clip fraction)."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    clipfrac = masked_mean((clipped_loss > unclipped_loss).to(values.dtype), mask)
    return loss, clipfrac.detach()


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits), [..., V] → [...]."""
    return entropy_from_log_probs(logits.log_softmax(dim=-1))


def entropy_from_log_probs(logp: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of a distribution given as log-probabilities, [..., V] → [...]."""
    return -(logp.exp() * logp).sum(dim=-1)


# --- models ---------------------------------------------------------------------------------------

class ValueModel(torch.nn.Module):
    """The critic: a transformer backbone and a scalar head giving a value for every position."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids).last_hidden_state
        return self.head(hidden).squeeze(-1)

    @classmethod
    def from_reward_model(cls, reward_model: torch.nn.Module) -> ValueModel:
        """Initialised from the reward model, as in InstructGPT."""
        critic = cls(copy.deepcopy(reward_model.backbone), copy.deepcopy(reward_model.head))
        return critic.requires_grad_(True)  # the reward model itself stays frozen

    @classmethod
    def from_policy(cls, path: str | Path, device) -> ValueModel:
        """For a reward callable without a reward model: the policy's backbone and a zero head."""
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(str(path), dtype=torch.float32)
        head = torch.nn.Linear(backbone.config.hidden_size, 1)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return cls(backbone, head).to(device)


def shares_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, n_prompt: int, group: int) -> bool:
    """Whether the rows come in consecutive groups of ``group`` with the same (left-padded) prompt, as RLOO's
    k samples of each prompt do."""
    rows = input_ids.size(0)
    if group < 2 or rows % group or n_prompt < 1:
        return False
    for tensor in (input_ids, attention_mask):
        prompts = tensor[:, :n_prompt].view(rows // group, group, n_prompt)
        if not torch.equal(prompts, prompts[:, :1].expand_as(prompts)):
            return False
    return True


def group_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, n_prompt: int, group: int
                 ) -> dict[str, torch.Tensor]:
    """Rows that share prompts in consecutive groups (``shares_prompts``) in the shared-prefix layout of
    ``training.models.prefix_shared_passes``: each group's prompt once, each row's response as its tail."""
    rows = torch.arange(input_ids.size(0) // group, device=input_ids.device).repeat_interleave(group)
    return {"prefix_ids": input_ids[::group, :n_prompt], "prefix_mask": attention_mask[::group, :n_prompt],
            "tail_ids": input_ids[:, n_prompt:], "tail_mask": attention_mask[:, n_prompt:], "row_group": rows}


def response_logits(model, input_ids, attention_mask, position_ids, n_prompt: int, group: int = 1) -> torch.Tensor:
    """The logits that predict the response tokens ``input_ids[:, n_prompt:]``, [B, T, V] (positions
    n_prompt − 1 … end − 1). Only those positions get the LM head where the model supports it
    (``logits_to_keep``); with ``group`` > 1 and rows that share prompts in groups of it, each prompt runs once
    and every row then runs only its response (``group_layout``, ``training.models.tail_token_logits``)."""
    keep = input_ids.size(1) - n_prompt + 1
    if keep > 2 and shares_prompts(input_ids, attention_mask, n_prompt, group) and shares_prefixes(model):
        return tail_token_logits(model, group_layout(input_ids, attention_mask, n_prompt, group))
    extra = {"logits_to_keep": keep} if keeps_logits(model) else {}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **extra).logits
    return logits[:, logits.size(1) - keep:-1]  # either way, the response's positions


def sequence_logprobs(model, input_ids, attention_mask, position_ids, n_prompt: int, temperature: float,
                      with_entropy: bool = False, entropy_grad: bool = True, group: int = 1
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (under logits / temperature) of the response tokens ``input_ids[:, n_prompt:]``, [B, T].
    The entropy is computed outside the autograd graph unless ``entropy_grad`` (it only feeds a metric
    when the entropy bonus is off). ``group``: see ``response_logits``."""
    logits = response_logits(model, input_ids, attention_mask, position_ids, n_prompt, group).float() / temperature
    log_softmax = logits.log_softmax(dim=-1)
    logprobs = torch.gather(log_softmax, 2, input_ids[:, n_prompt:, None]).squeeze(-1)
    if not with_entropy:
        return logprobs, None
    return logprobs, entropy_from_log_probs(log_softmax if entropy_grad else log_softmax.detach())


def response_values(critic, input_ids, attention_mask, position_ids, n_prompt: int) -> torch.Tensor:
    """V(s_t) for each response token t: the critic's output at the position just before it, [B, T]."""
    return critic(input_ids, attention_mask, position_ids)[:, n_prompt - 1:-1].float()


@torch.no_grad()
def reward_model_scores(reward_model, input_ids, attention_mask, position_ids, last_index, group: int = 1, *,
                        n_prompt: int) -> torch.Tensor:
    """The RM's scalar for each row (left-padded prompt of ``n_prompt`` columns + right-padded response),
    read as the RM reads it (``RewardModel.score``): at the last response token, or averaged over the
    response. With ``group`` > 1 and rows that share prompts in groups of it, each prompt runs once
    (``group_layout``)."""
    backbone = reward_model.backbone
    if (input_ids.size(1) > n_prompt and shares_prompts(input_ids, attention_mask, n_prompt, group)
            and shares_prefixes(backbone)):
        _, tail = prefix_shared_passes(backbone, group_layout(input_ids, attention_mask, n_prompt, group))
        return reward_model.score(tail.last_hidden_state, last_index - n_prompt,
                                  torch.zeros_like(last_index)).float()
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    return reward_model.score(hidden, last_index, torch.full_like(last_index, n_prompt)).float()


# --- rollout ---------------------------------------------------------------------------------------

@dataclass
class Rollout:
    input_ids: torch.Tensor       # [B, P + T]: left-padded prompt, then the response, then padding
    attention_mask: torch.Tensor  # [B, P + T]
    position_ids: torch.Tensor    # [B, P + T]
    n_prompt: int                 # P
    mask: torch.Tensor            # [B, T]: 1 on response tokens up to and including EOS
    logprobs: torch.Tensor        # [B, T] behaviour policy (sampling time)
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor          # [B] after clipping and the missing-EOS penalty
    raw_scores: torch.Tensor      # [B] as the reward model or callable gave them
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    eos: torch.Tensor             # [B] bool: the response ended (EOS or a stop rule), not cut at max length
    prompts: list[str]
    responses: list[str]

    def rows(self, index: torch.Tensor) -> Rollout:
        picked = {name: getattr(self, name)[index] for name in
                  ("input_ids", "attention_mask", "position_ids", "mask", "logprobs", "ref_logprobs", "values",
                   "scores", "raw_scores", "rewards", "advantages", "returns", "eos")}
        idx = index.tolist()
        return Rollout(n_prompt=self.n_prompt, prompts=[self.prompts[i] for i in idx],
                       responses=[self.responses[i] for i in idx], **picked)


def rollout_generate_config(config: PPOConfig | RLOOConfig) -> GenerateConfig:
    """The candidate generator's settings that PPO's rollouts share: sampling, length, stop rules, format."""
    return GenerateConfig(model="-", temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                          max_new_tokens=config.max_new_tokens, stop=config.stop,
                          stop_at_turn_end=config.stop_at_turn_end, chat_template=config.chat_template)


def kept_tokens(tokenizer, tokens: list[int], texts: tuple[str, ...]) -> int:
    """How many of ``tokens`` a response keeps when a stop string appeared in their text: the longest
    prefix whose text holds no stop string and is the start of the text cut before it (the stop string's
    tokens go, as they go from a candidate's text)."""
    cut = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), texts) or ""
    for keep in range(len(tokens) - 1, -1, -1):
        text = tokenizer.decode(tokens[:keep], skip_special_tokens=True)
        if cut.startswith(text) and cut_at_stop(text, texts) is None:
            return keep
    return 0


@torch.no_grad()
def sample_responses(actor, tokenizer, prompt_ids: list[list[int]], config: PPOConfig | RLOOConfig,
                     generator: torch.Generator, group: int = 1) -> tuple[torch.Tensor, ...]:
    """Sample with the KV cache, ending each response as the candidate generator does (EOS, the format's
    turn tokens, a stop string: ``training.generate.stop_rules``). Returns (input_ids, attention_mask,
    position_ids, P, response mask, sampling log-probs under logits / temperature, ended): ``ended`` is
    true for a response that ended by a rule rather than at ``max_new_tokens``. With ``group`` > 1 and
    prompts in consecutive groups of it, each group's prompt is read once (``prefix_cache``)."""
    device = next(actor.parameters()).device
    batch, width = len(prompt_ids), max(map(len, prompt_ids))
    pad = tokenizer.pad_token_id
    ids = torch.full((batch, width), pad, dtype=torch.long, device=device)
    attn = torch.zeros((batch, width), dtype=torch.long, device=device)
    for i, row in enumerate(prompt_ids):
        ids[i, width - len(row):] = torch.tensor(row, device=device)
        attn[i, width - len(row):] = 1
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    sampling = rollout_generate_config(config)
    rules = stop_rules(tokenizer, sampling)
    stop_ids = torch.tensor(sorted(rules.token_ids), dtype=torch.long, device=device)
    window = max((len(t) for t in rules.texts), default=0) + 2
    seen = torch.zeros((batch, 1), dtype=torch.bool, device=device)  # no repetition penalty in PPO
    cache_kw, cache, current = cache_keyword(actor) or "past_key_values", None, ids
    last_only = {"logits_to_keep": 1} if keeps_logits(actor) else {}  # the prompt's positions need no logits
    step_positions = positions
    tokens, logprobs, alive = [], [], torch.ones(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    ended = torch.zeros(batch, dtype=torch.bool, device=device)
    mask_so_far = attn
    shared = shares_prompts(ids, attn, width, group) and shares_prefixes(actor)
    for step in range(config.max_new_tokens):
        if step == 0 and shared:
            rows = torch.arange(batch // group, device=device).repeat_interleave(group)
            out, cache = prefix_cache(actor, ids[::group], attn[::group], rows, **last_only)
            cache = cache[cache_kw]
            logits = out.logits[:, -1].float()[rows]
        else:
            out = actor(input_ids=current, attention_mask=mask_so_far, position_ids=step_positions, use_cache=True,
                        **{cache_kw: cache}, **last_only)
            cache = returned_cache(out, cache_kw)
            logits = out.logits[:, -1].float()
        scaled = logits / config.temperature
        filtered = process_logits(logits, seen.expand(-1, logits.size(-1)), sampling)
        chosen = torch.multinomial(F.softmax(filtered, dim=-1), 1, generator=generator).squeeze(-1)
        chosen = torch.where(alive, chosen, torch.full_like(chosen, pad))
        tokens.append(chosen)
        logprobs.append(torch.gather(scaled.log_softmax(-1), 1, chosen[:, None]).squeeze(-1))
        lengths += alive.long()
        stopped = alive & torch.isin(chosen, stop_ids)
        if rules.texts:
            so_far = torch.stack(tokens, dim=1)
            for i in alive.nonzero().flatten().tolist():
                row = so_far[i, :int(lengths[i])].tolist()
                tail = tokenizer.decode(row[-window:], skip_special_tokens=True)
                if not stopped[i] and cut_at_stop(tail, rules.texts) is not None:
                    stopped[i], lengths[i] = True, kept_tokens(tokenizer, row, rules.texts)
        ended |= stopped
        alive = alive & ~stopped
        if not alive.any():
            break
        current = chosen[:, None]
        mask_so_far = torch.cat([mask_so_far, torch.ones((batch, 1), dtype=attn.dtype, device=device)], dim=1)
        step_positions = step_positions[:, -1:] + 1
    response = torch.stack(tokens, dim=1)
    steps = response.size(1)
    mask = (torch.arange(steps, device=device)[None, :] < lengths[:, None]).long()
    response = torch.where(mask.bool(), response, torch.full_like(response, pad))
    full_ids = torch.cat([ids, response], dim=1)
    full_attn = torch.cat([attn, mask], dim=1)
    full_positions = torch.cat([positions, positions[:, -1:] + 1 + torch.arange(steps, device=device)[None, :]], 1)
    sample_logprobs = torch.stack(logprobs, dim=1) * mask
    return full_ids, full_attn, full_positions, width, mask, sample_logprobs, ended


# --- the stage -------------------------------------------------------------------------------------

@dataclass
class Models:
    """Every model is in eval mode for the whole run (``_without_dropout``); nothing switches one back."""

    actor: torch.nn.Module              # possibly DDP-wrapped
    critic: torch.nn.Module | None      # possibly DDP-wrapped; None for RLOO (training.rloo), which has none
    ref: torch.nn.Module | None         # None with a LoRA actor: the adapter is disabled instead
    reward_model: torch.nn.Module | None
    tokenizer: object

    def reference_logprobs(self, rollout_ids, attn, positions, n_prompt, temperature, group: int = 1
                           ) -> torch.Tensor:
        actor = unwrap(self.actor)
        if self.ref is not None:
            return sequence_logprobs(self.ref, rollout_ids, attn, positions, n_prompt, temperature, group=group)[0]
        with actor.disable_adapter():
            return sequence_logprobs(actor, rollout_ids, attn, positions, n_prompt, temperature, group=group)[0]


def _without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode, to stay so for the whole PPO run: no dropout in rollouts or updates.

    The importance ratio ρ = π/π_old divides the update's probabilities by the rollout's, so both forwards
    must be the same function, or ρ ≠ 1 before the policy has moved (and the critic's values drift from
    the ones its clipped loss compares with). Eval mode rather than setting each ``nn.Dropout``'s p to 0
    (TRL's way): every transformers and peft layer gates its randomness on ``self.training``, including
    functional dropout whose rate is copied from the config at init (Llama's ``attention_dropout``),
    which no ``nn.Dropout`` holds. Eval mode does not stop gradients or DDP's all-reduce.
    """
    return model.eval()


def _load_models(config: PPOConfig, reward_fn: RewardFn | None, rt) -> Models:
    tokenizer = load_tokenizer(config.policy)
    actor = load_causal_lm(config.policy, rt.device)
    ref = None
    if config.lora:
        actor = add_lora(actor, config)
    else:
        ref = copy.deepcopy(actor).eval().requires_grad_(False)
    reward_model = None
    if config.reward_model:
        reward_model = RewardModel.from_pretrained(config.reward_model, rt.device).eval().requires_grad_(False)
        critic = ValueModel.from_reward_model(reward_model)
    elif reward_fn is not None:
        critic = ValueModel.from_policy(config.policy, rt.device)
    else:
        raise ValueError("PPO needs a reward: set reward_model, or pass reward_fn")
    if config.critic_train_layers:
        train_top_layers(critic.backbone, config.critic_train_layers)
    # After add_lora: peft creates its LoRA dropout layers in train mode.
    actor, critic = _without_dropout(actor), _without_dropout(critic)
    return Models(wrap(actor, rt), wrap(critic, rt), ref, reward_model, tokenizer)


@torch.no_grad()
def make_rollout(models: Models, prompts: list[PPOPrompt], config: PPOConfig | RLOOConfig, kl_coef: float,
                 generator: torch.Generator, reward_fn: RewardFn | None, timings: dict[str, float], group: int = 1
                 ) -> Rollout:
    """Sample, score and reward one batch. ``group``: the prompts come in consecutive groups of this many
    copies (RLOO's k samples), whose prompt the reward model and the reference then run once per group."""
    actor, critic = unwrap(models.actor), unwrap(models.critic)
    tokenizer = models.tokenizer
    started = time.perf_counter()
    prompt_ids = [fit_prompt(encode_prompt(tokenizer, p.prompt, chat_template=config.chat_template),
                             config.max_prompt_length, config.truncation, what=f"prompt {p.id or i}")
                  for i, p in enumerate(prompts)]
    ids, attn, positions, n_prompt, mask, logprobs, eos = sample_responses(actor, tokenizer, prompt_ids, config,
                                                                           generator, group)
    timings["generation"] += time.perf_counter() - started

    started = time.perf_counter()
    lengths = mask.sum(dim=1)
    texts = [tokenizer.decode(ids[i, n_prompt:n_prompt + int(lengths[i])], skip_special_tokens=True)
             for i in range(len(ids))]
    rendered = [render_plain(p.prompt) for p in prompts]
    if reward_fn is not None:
        raw = torch.tensor([float(s) for s in reward_fn(rendered, texts)], dtype=torch.float32, device=ids.device)
    else:
        raw = reward_model_scores(models.reward_model, ids, attn, positions, n_prompt + (lengths - 1).clamp(min=0),
                                  group, n_prompt=n_prompt)
    ref_logprobs = models.reference_logprobs(ids, attn, positions, n_prompt, config.temperature, group) * mask
    values = (response_values(critic, ids, attn, positions, n_prompt) * mask if critic is not None
              else torch.zeros_like(logprobs))
    timings["scoring"] += time.perf_counter() - started

    scores = raw - config.missing_eos_penalty * (~eos).float() if config.missing_eos_penalty else raw.clone()
    rewards = kl_penalized_rewards(logprobs, ref_logprobs, scores, mask, kl_coef, config.score_clip or None)
    # Without a critic (RLOO) the stage computes its own advantages from the rewards.
    advantages, returns = (gae(rewards, values, mask, config.gamma, config.lam) if critic is not None
                           else (torch.zeros_like(rewards), torch.zeros_like(rewards)))
    return Rollout(ids, attn, positions, n_prompt, mask, logprobs, ref_logprobs, values, scores, raw, rewards,
                   advantages, returns, eos, rendered, texts)


def ptx_batch_rows(n_rows: int, batch_size: int, seed: int, index: int) -> list[int]:
    """The rows of batch ``index`` (0-based) of the endless PPO-ptx stream: each pass over the ``n_rows``
    rows is a shuffle seeded by (seed, pass), cut into full batches of ``batch_size`` (a short remainder is
    skipped). A pure function, so the number of batches drawn is all a checkpoint needs to continue the
    stream. Needs ``n_rows >= batch_size``."""
    per_pass = n_rows // batch_size
    epoch, position = divmod(index, per_pass)
    order = _shuffled(n_rows, seed * 1_000_003 + epoch)
    return list(order[position * batch_size:(position + 1) * batch_size])


@functools.lru_cache(maxsize=1)  # consecutive batches come from the same pass
def _shuffled(n: int, seed: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return tuple(order)


@dataclass
class PtxStream:
    """PPO-ptx's SFT/pretraining batches, endlessly; ``position`` (batches drawn) is its whole state."""

    rows: list[tuple[list[int], int]]   # encode_pair's (ids, number of prompt tokens)
    batch_size: int
    pad_id: int
    seed: int
    position: int = 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        from training.sft import collate_lm

        index = ptx_batch_rows(len(self.rows), self.batch_size, self.seed, self.position)
        self.position += 1
        return collate_lm([self.rows[i] for i in index], self.pad_id)


def _ptx_stream(config: PPOConfig, path: Path | None, tokenizer, seed: int) -> PtxStream | None:
    """The PPO-ptx stream over the SFT file ``path`` (None when PPO-ptx is off)."""
    if not path or config.ptx_coef <= 0:
        return None
    rows = [encode_pair(tokenizer, ex.prompt, ex.response, max_length=config.max_prompt_length + config.max_new_tokens,
                        truncation="left", chat_template=config.chat_template) for ex in read_sft(path)]
    if len(rows) < config.ptx_batch_size:
        raise ValueError(f"{path} has {len(rows)} examples, fewer than ptx_batch_size={config.ptx_batch_size}")
    return PtxStream(rows, config.ptx_batch_size, tokenizer.pad_token_id, seed)


def _optimizer(model, lr, config):
    params = [p for p in model.parameters() if p.requires_grad]
    return adamw(params, lr=lr, betas=config.adam_betas, weight_decay=0.0)


def ppo_update(models: Models, rollout: Rollout, config: PPOConfig, optimizers, ptx: PtxStream | None, ema, rt,
               should_stop) -> tuple[dict[str, float], bool]:
    """``ppo_epochs`` passes over the rollout in minibatches. Returns (mean metrics, stopped early)."""
    actor, critic = models.actor, models.critic
    advantages = masked_whiten(rollout.advantages, rollout.mask) if config.whiten_advantages else rollout.advantages
    sums: dict[str, float] = {}
    steps = 0
    n = rollout.input_ids.size(0)
    for _ in range(config.ppo_epochs):
        order = torch.randperm(n, device=rollout.input_ids.device)
        for start in range(0, n - config.minibatch_size + 1, config.minibatch_size):
            index = order[start:start + config.minibatch_size]
            mb = rollout.rows(index)
            logprobs, entropy = sequence_logprobs(actor, mb.input_ids, mb.attention_mask, mb.position_ids,
                                                  mb.n_prompt, config.temperature, with_entropy=True,
                                                  entropy_grad=config.entropy_coef > 0)
            pg_loss, clipfrac, approx_kl = policy_loss(logprobs, mb.logprobs, advantages[index], mb.mask,
                                                       config.cliprange)
            entropy_mean = masked_mean(entropy, mb.mask)
            actor_loss = pg_loss - config.entropy_coef * entropy_mean
            ratio = torch.exp(logprobs.detach() - mb.logprobs)[mb.mask.bool()]
            metrics = {"ppo/policy_loss": pg_loss.item(), "ppo/clipfrac": clipfrac.item(),
                       "ppo/approx_kl": approx_kl.item(), "ppo/entropy": entropy_mean.item(),
                       "ppo/ratio_min": ratio.min().item(), "ppo/ratio_max": ratio.max().item()}
            if ptx is not None:
                batch = {k: v.to(rt.device) for k, v in ptx.next_batch().items()}
                from training.sft import masked_lm_loss

                lm_logits = actor(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                ptx_loss, _ = masked_lm_loss(lm_logits, batch["labels"])
                actor_loss = actor_loss + config.ptx_coef * ptx_loss
                metrics["ppo/ptx_loss"] = ptx_loss.item()
            values = response_values(critic, mb.input_ids, mb.attention_mask, mb.position_ids, mb.n_prompt)
            vf_loss, vf_clipfrac = value_loss(values, mb.values, mb.returns, mb.mask, config.cliprange_value)
            metrics.update({"ppo/value_loss": vf_loss.item(), "ppo/value_clipfrac": vf_clipfrac.item()})
            actor_opt, critic_opt = optimizers
            actor_opt.zero_grad(set_to_none=True)
            critic_opt.zero_grad(set_to_none=True)
            (actor_loss + config.vf_coef * vf_loss).backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(actor.parameters(), config.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(critic.parameters(), config.max_grad_norm)
            actor_opt.step()
            critic_opt.step()
            if ema is not None:
                ema.update(unwrap(actor))
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + value
            steps += 1
            if rt.any(should_stop()):
                return {k: v / steps for k, v in sums.items()}, True
    return {k: v / max(steps, 1) for k, v in sums.items()}, False


class EMA:
    """Exponential moving average of the actor's trainable weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].mul_(self.decay).add_(param.detach(), alpha=1 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            if name in self.shadow:
                param.copy_(self.shadow[name])


@torch.no_grad()
def held_out_metrics(models: Models, records: list[PPOPrompt], config: PPOConfig | RLOOConfig, judge,
                     reward_fn: RewardFn | None, rt) -> dict[str, float]:
    """The policy on held-out prompts, sampled exactly as in training but always with the same seeds, so
    that the numbers of two iterations compare: the training RM's (or reward_fn's) score, the judge's,
    KL to the reference in nats per sequence, length and EOS rate."""
    generator = torch.Generator(device=rt.device).manual_seed(config.seed * 7 + 12_345)
    timings = {"generation": 0.0, "scoring": 0.0}
    scores, judged, kls, lengths, eos = [], [], [], [], []
    for start in range(0, len(records), config.batch_size):
        rollout = make_rollout(models, records[start:start + config.batch_size], config, 0.0, generator, reward_fn,
                               timings)
        last = n_prompt_last_index(rollout)
        scores += rollout.raw_scores.tolist()
        kls += ((rollout.logprobs - rollout.ref_logprobs) * rollout.mask).sum(dim=1).tolist()
        lengths += rollout.mask.sum(dim=1).tolist()
        eos += rollout.eos.float().tolist()
        if judge is not None:
            judged += reward_model_scores(judge, rollout.input_ids, rollout.attention_mask, rollout.position_ids,
                                          last, n_prompt=rollout.n_prompt).tolist()
    n = len(scores)
    metrics = {"eval/score": sum(scores) / n, "eval/kl": sum(kls) / n, "eval/length": sum(lengths) / n,
               "eval/eos_rate": sum(eos) / n}
    if judged:
        metrics["eval/judge"] = sum(judged) / n
    return metrics


def n_prompt_last_index(rollout: Rollout) -> torch.Tensor:
    """Each row's last response token (where a reward model reads its score)."""
    return rollout.n_prompt + (rollout.mask.sum(dim=1) - 1).clamp(min=0)


def rollout_metrics(rollout: Rollout, kl_coef: float) -> dict[str, float]:
    kl_per_seq = ((rollout.logprobs - rollout.ref_logprobs) * rollout.mask).sum(dim=1)
    lengths = rollout.mask.sum(dim=1).float()
    valid_adv = rollout.advantages[rollout.mask.bool()]
    return {
        "ppo/score": rollout.raw_scores.mean().item(),
        "ppo/kl": kl_per_seq.mean().item(),
        "ppo/beta": kl_coef,
        "ppo/kl_penalty": kl_coef * kl_per_seq.mean().item(),
        "ppo/reward": (rollout.scores - kl_coef * kl_per_seq).mean().item(),
        "ppo/advantage_mean": valid_adv.mean().item() if valid_adv.numel() else 0.0,
        "ppo/advantage_std": valid_adv.std().item() if valid_adv.numel() > 1 else 0.0,
        "ppo/response_length": lengths.mean().item(),
        "ppo/eos_rate": rollout.eos.float().mean().item(),
    }


def _save_checkpoint(path: Path, models: Models, optimizers, kl: KLController, iteration: int, ema,
                     ptx: PtxStream | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"iteration": iteration, "actor": unwrap(models.actor).state_dict(),
                "critic": unwrap(models.critic).state_dict(), "actor_opt": optimizers[0].state_dict(),
                "critic_opt": optimizers[1].state_dict(), "beta": kl.value, "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(), "ema": ema.shadow if ema else None,
                "ptx_position": ptx.position if ptx else 0}, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path, models: Models, optimizers, kl: KLController, ema, ptx: PtxStream | None,
                     device) -> int:
    # Our own file, written by _save_checkpoint: full unpickling is safe.
    state = torch.load(path, map_location=device, weights_only=False)
    unwrap(models.actor).load_state_dict(state["actor"])
    unwrap(models.critic).load_state_dict(state["critic"])
    optimizers[0].load_state_dict(state["actor_opt"])
    optimizers[1].load_state_dict(state["critic_opt"])
    kl.value = state["beta"]
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    if ema is not None and state["ema"] is not None:
        ema.shadow = state["ema"]
    if ptx is not None:
        ptx.position = state.get("ptx_position", 0)  # older checkpoints did not save it: start over
    return state["iteration"]


# --- the iteration loop shared by the online RL stages (PPO here, RLOO in training.rloo) -------------------

@dataclass
class RLStage:
    """What one online RL algorithm plugs into ``run_rl_iterations``: its rollout, its update and its
    metrics; ``save(iteration)`` writes its checkpoint (on the main process only); ``shown`` is how many
    rollout rows go into samples.jsonl at each sampled iteration."""
    name: str
    rollout: Callable[[list[PPOPrompt], float, torch.Generator, dict[str, float]], Rollout]
    update: Callable[[Rollout], tuple[dict[str, float], bool]]
    metrics: Callable[[Rollout, float], dict[str, float]]
    save: Callable[[int], None]
    shown: int = 4


@dataclass
class RLRun:
    status: str  # "completed" or "stopped"
    iteration: int  # the last iteration done
    last: dict[str, float]  # the last iteration's metrics
    held: dict[str, float]  # the last held-out evaluation (``eval/*``), empty without held-out prompts
    timings: dict[str, float]  # seconds in generation, scoring and training

    def time_shares(self) -> dict[str, float]:
        total = sum(self.timings.values()) or 1.0
        return {f"time_share/{k}": round(v / total, 3) for k, v in self.timings.items()}


def load_judge(config: PPOConfig | RLOOConfig, held_out: list[PPOPrompt], rt):
    """The independent judge reward model (never trained on), loaded only when there are held-out prompts."""
    if not (held_out and config.judge):
        return None
    return RewardModel.from_pretrained(config.judge, rt.device).eval().requires_grad_(False)


def start_rl(config: PPOConfig | RLOOConfig, prompts: Path):
    """The runtime (seeded per rank) and the training prompts of an online RL stage."""
    rt = init_runtime(config.device)
    seed_all(config.seed + rt.rank)
    records = read_ppo_prompts(prompts)
    if len(records) < config.batch_size:
        raise ValueError(f"{prompts} has {len(records)} prompts, fewer than batch_size={config.batch_size}")
    return rt, records


def run_rl_iterations(stage: RLStage, config: PPOConfig | RLOOConfig, models: Models, records: list[PPOPrompt],
                      kl: KLController, reporter: Reporter, rt, *, start: int, out: Path,
                      reward_fn: RewardFn | None, eval_data: Path | None, should_stop: ShouldStop) -> RLRun:
    """Iterations ``start + 1 … config.iterations``: rollout → update → β → log → samples → held-out
    evaluation (before training, every ``eval_every`` iterations and at the end) → checkpoint every
    ``checkpoint_every`` iterations and when stopped. Prompt order and sampling depend only on (seed,
    iteration, rank), so a resumed run draws what the uninterrupted one would have. Writes samples.jsonl."""
    held_out = read_ppo_prompts(eval_data)[:config.eval_prompts] if eval_data else []
    judge = load_judge(config, held_out, rt)

    def evaluate(step: int) -> dict[str, float]:
        started = time.perf_counter()
        metrics = held_out_metrics(models, held_out, config, judge, reward_fn, rt)
        reporter.log(step, config.iterations, {**metrics, "time/eval": time.perf_counter() - started})
        return metrics

    held = evaluate(0) if held_out and start == 0 else {}
    samples = []
    timings = {"generation": 0.0, "scoring": 0.0, "training": 0.0}
    status, iteration, last = "completed", start, {}
    for iteration in range(start + 1, config.iterations + 1):
        if rt.any(should_stop()):
            status, iteration = "stopped", iteration - 1
            break
        rng = random.Random(config.seed * 1_000_003 + iteration * 97 + rt.rank)
        batch = rng.sample(records, config.batch_size)
        generator = torch.Generator(device=rt.device).manual_seed(config.seed * 100_003 + iteration * 31 + rt.rank)
        torch.manual_seed(config.seed * 7_919 + iteration)
        before = dict(timings)
        rollout = stage.rollout(batch, kl.value, generator, timings)
        started = time.perf_counter()
        update, stopped = stage.update(rollout)
        timings["training"] += time.perf_counter() - started
        last = {**stage.metrics(rollout, kl.value), **update,
                **{f"time/{k}": timings[k] - before[k] for k in timings}}
        update_from_all_ranks(kl, last[f"{stage.name}/kl"], len(rollout.prompts), rt.all_sum)
        reporter.log(iteration, config.iterations, last)
        if rt.is_main and (iteration % config.sample_every == 0 or iteration == 1):
            shown = zip(rollout.prompts[:stage.shown], rollout.responses[:stage.shown],
                        rollout.raw_scores[:stage.shown].tolist(), strict=True)
            samples += [{"iteration": iteration, "prompt": p, "response": r, "score": round(s, 4)} for p, r, s in shown]
        if stopped:
            status = "stopped"
            break
        if held_out and (iteration == config.iterations or (config.eval_every and iteration % config.eval_every == 0)):
            held = evaluate(iteration)
        if iteration % config.checkpoint_every == 0:
            stage.save(iteration)
    if status == "stopped":
        stage.save(iteration)
    if rt.is_main and samples:
        write_jsonl(out / SAMPLES_FILE, samples)
    return RLRun(status, iteration, last, held, timings)


def train_ppo(config: PPOConfig, prompts: Path, out: Path, *, reward_fn: RewardFn | None = None,
              ptx_data: Path | None = None, eval_data: Path | None = None, on_log: OnLog = no_log,
              should_stop: ShouldStop = never_stop) -> StageResult:
    """Optimise ``config.policy`` against ``config.reward_model`` (or any ``reward_fn``) on the PPO-prompt
    file ``prompts``; the policy is saved to ``out`` with metrics.jsonl, samples.jsonl and summary.json.
    With ``eval_data`` (held-out prompts), ``eval/*`` metrics are logged before training (the SFT policy),
    every ``eval_every`` iterations and at the end (``held_out_metrics``).

    Resumes from ``out/checkpoints/last.pt`` (with the same result as an uninterrupted run for a fixed
    seed); stops within one optimizer step when ``should_stop()`` is true.
    """
    out = Path(out)
    rt, records = start_rl(config, prompts)
    models = _load_models(config, reward_fn, rt)
    optimizers = (_optimizer(models.actor, config.learning_rate, config),
                  _optimizer(models.critic, config.critic_learning_rate, config))
    kl = KLController(config.kl_coef, config.adaptive_kl, config.kl_target, config.kl_horizon)
    ema = EMA(unwrap(models.actor), config.ema_decay) if config.ema_decay > 0 else None
    ptx = _ptx_stream(config, ptx_data, models.tokenizer, config.seed)
    checkpoint = out / CHECKPOINT
    start = 0
    if config.resume and checkpoint.exists():
        start = _load_checkpoint(checkpoint, models, optimizers, kl, ema, ptx, rt.device)
    reporter = Reporter(out, "ppo", config, on_log, main=rt.is_main, append=start > 0)

    def save(iteration: int) -> None:
        if rt.is_main:
            _save_checkpoint(checkpoint, models, optimizers, kl, iteration, ema, ptx)

    stage = RLStage(
        "ppo",
        rollout=lambda batch, beta, generator, timings: make_rollout(models, batch, config, beta, generator,
                                                                      reward_fn, timings),
        update=lambda rollout: ppo_update(models, rollout, config, optimizers, ptx, ema, rt, should_stop),
        metrics=rollout_metrics, save=save)
    run = run_rl_iterations(stage, config, models, records, kl, reporter, rt, start=start, out=out,
                            reward_fn=reward_fn, eval_data=eval_data, should_stop=should_stop)
    if rt.is_main:
        actor = unwrap(models.actor)
        if ema is not None:
            actor = copy.deepcopy(actor)
            ema.copy_to(actor)
        save_pretrained(actor, models.tokenizer, out)
    rt.barrier()
    summary = {"iterations": run.iteration, "final_kl_coef": kl.value,
               "parameters": count_parameters(unwrap(models.actor)), **run.last, **run.held, **run.time_shares()}
    result = reporter.finish(run.status, run.iteration, summary, model=unwrap(models.actor))
    rt.close()
    return result


def mean_score(policy: str | Path, prompts: list[PPOPrompt], *, reward_model: str | Path | None = None,
               reward_fn: RewardFn | None = None, max_new_tokens: int = 32, temperature: float = 1.0,
               seed: int = 0, batch_size: int = 16) -> dict[str, float]:
    """Evaluate a policy on held-out prompts: the mean reward (RM or callable) of its sampled responses and
    their mean length. ``kl_to_reference`` gives the matching KL to another policy."""
    config = PPOConfig(policy=str(policy), reward_model=str(reward_model or ""), max_new_tokens=max_new_tokens,
                       temperature=temperature, batch_size=max(batch_size, 1), minibatch_size=1, seed=seed)
    rt = init_runtime("cpu")
    models = _load_models(config, reward_fn, rt)
    timings = {"generation": 0.0, "scoring": 0.0, "training": 0.0}
    generator = torch.Generator().manual_seed(seed)
    scores, lengths = [], []
    for start in range(0, len(prompts), batch_size):
        rollout = make_rollout(models, prompts[start:start + batch_size], config, 0.0, generator, reward_fn, timings)
        scores += rollout.raw_scores.tolist()
        lengths += rollout.mask.sum(dim=1).tolist()
    return {"score": sum(scores) / len(scores), "response_length": sum(lengths) / len(lengths), "n": len(scores)}


def kl_to_reference(policy: str | Path, reference: str | Path, prompts: list[PPOPrompt], *, max_new_tokens: int = 32,
                    seed: int = 0, batch_size: int = 16) -> float:
    """Mean per-sequence KL(π ‖ π_ref) estimated on responses sampled from ``policy``."""
    tokenizer = load_tokenizer(policy)
    actor, ref = load_causal_lm(policy).eval(), load_causal_lm(reference).eval()
    config = PPOConfig(policy=str(policy), max_new_tokens=max_new_tokens, batch_size=batch_size, minibatch_size=1)
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            ids = [fit_prompt(encode_prompt(tokenizer, p.prompt), config.max_prompt_length, "left")
                   for p in prompts[start:start + batch_size]]
            full, attn, pos, n_prompt, mask, logprobs, _ = sample_responses(actor, tokenizer, ids, config, generator)
            ref_lp = sequence_logprobs(ref, full, attn, pos, n_prompt, 1.0)[0]
            total += float(((logprobs - ref_lp) * mask).sum())
            count += len(ids)
    return total / max(count, 1)

