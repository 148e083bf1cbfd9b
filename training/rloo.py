"""RLOO: REINFORCE with a leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"),
against a reward model under a KL penalty to the SFT policy. No critic: the other samples of the same
prompt are the baseline.

One iteration:
1. **Rollout.** ``batch_size`` prompts, each sampled k times, exactly as PPO rolls out
   (``training.ppo.make_rollout``: the same sampling settings, stop rules, prompt format, reward model or
   reward callable, and reference log-probs).
2. **Rewards.** PPO's per-token rewards (``training.ppo.kl_penalized_rewards``): r_t = −β·(log π − log π_ref)
   on each response token, plus the (clipped) score on the last one. A sample's return is their sum,
   R_i = s_i − β·KL_i.
3. **Advantages** (``rloo_advantages``). Sample i's baseline is the mean return of the prompt's other k − 1
   samples, b_i = (Σ_j R_j − R_i)/(k − 1). With ``kl_penalty="sequence"`` every token of sample i gets
   A_i = R_i − b_i; with ``"token"``, token t gets its reward-to-go minus the same baseline,
   A_{i,t} = Σ_{t' ≥ t} r_{i,t'} − b_i, so a token is not charged for the divergence of the tokens before it.
   Both baselines leave sample i out, so the gradient stays unbiased.
4. **Optimisation.** ``update_epochs`` passes over the rollout in minibatches of sequences: PPO's clipped
   surrogate (``training.ppo.policy_loss``), or with ``loss="plain"`` the same surrogate unclipped,
   mean(−A·π/π_old), whose gradient at the rollout's policy is REINFORCE's −A·∇log π.

The policy and reference stay in eval mode (no dropout), as in PPO, so the importance ratio is exactly 1
before the first step. Prompt order and sampling depend only on (seed, iteration, rank), and the
checkpoint holds the weights, the optimizer and β, so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import torch

from training.config import RLOOConfig
from training.kl import KLController
from training.loop import CHECKPOINT, adamw, load_checkpoint, save_checkpoint
from training.models import add_lora, count_parameters, load_causal_lm, load_tokenizer, save_pretrained
from training.ppo import (
    Models,
    RewardFn,
    RLStage,
    Rollout,
    make_rollout,
    masked_mean,
    policy_loss,
    rollout_metrics,
    run_rl_iterations,
    sequence_logprobs,
    start_rl,
)
from training.reporting import OnLog, Reporter, ShouldStop, StageResult, never_stop, no_log
from training.reward import RewardModel
from training.runtime import unwrap, wrap

# --- math: a small pure function ------------------------------------------------------------------------

def rloo_advantages(rewards: torch.Tensor, mask: torch.Tensor, k: int, per_token: bool = False) -> torch.Tensor:
    """[N, T] advantages from per-token rewards [N, T] (the KL penalty on each response token, the score on
    the last), for N = prompts × k rows where each prompt's k samples are consecutive.

    R_i = Σ_t r_{i,t}; b_i = (Σ_{j in i's group} R_j − R_i)/(k − 1). Sequence level: A_{i,t} = R_i − b_i on
    every valid token. ``per_token``: A_{i,t} = Σ_{t' ≥ t} r_{i,t'} − b_i (the reward-to-go). Padding gets 0."""
    mask = mask.to(rewards.dtype)
    rewards = rewards * mask
    if rewards.size(0) % k:
        raise ValueError(f"{rewards.size(0)} rows are not whole groups of k={k} samples")
    returns = rewards.sum(dim=1)
    group_sums = returns.view(-1, k).sum(dim=1, keepdim=True).expand(-1, k).reshape(-1)
    baselines = (group_sums - returns) / (k - 1)
    if per_token:
        to_go = rewards.flip(1).cumsum(1).flip(1)
        return (to_go - baselines[:, None]) * mask
    return (returns - baselines)[:, None] * mask


# --- the stage ------------------------------------------------------------------------------------------

def _load_models(config: RLOOConfig, reward_fn: RewardFn | None, rt) -> Models:
    """PPO's models without a critic: the policy (LoRA or not), the reference (a frozen copy, or the same
    weights with the adapter disabled) and the reward model. All in eval mode for the whole run: see
    ``training.ppo._without_dropout`` (after add_lora, whose dropout layers start in train mode)."""
    if not config.reward_model and reward_fn is None:
        raise ValueError("RLOO needs a reward: set reward_model, or pass reward_fn")
    tokenizer = load_tokenizer(config.policy)
    policy = load_causal_lm(config.policy, rt.device)
    ref = None
    if config.lora:
        policy = add_lora(policy, config)
    else:
        ref = copy.deepcopy(policy).eval().requires_grad_(False)
    reward_model = None
    if config.reward_model:
        reward_model = RewardModel.from_pretrained(config.reward_model, rt.device).eval().requires_grad_(False)
    return Models(wrap(policy.eval(), rt), None, ref, reward_model, tokenizer)


def rloo_rollout(models: Models, prompts: list, config: RLOOConfig, kl_coef: float, generator: torch.Generator,
                 reward_fn: RewardFn | None, timings: dict[str, float]) -> Rollout:
    """PPO's rollout of each prompt k times (consecutive rows), with RLOO's advantages in place of GAE's."""
    repeated = [p for p in prompts for _ in range(config.k)]
    rollout = make_rollout(models, repeated, config, kl_coef, generator, reward_fn, timings, group=config.k)
    advantages = rloo_advantages(rollout.rewards, rollout.mask, config.k, per_token=config.kl_penalty == "token")
    return dataclasses.replace(rollout, advantages=advantages)


def rloo_metrics(rollout: Rollout, kl_coef: float) -> dict[str, float]:
    """PPO's rollout metrics (score, KL, β, KL penalty, reward, advantages, length, EOS rate) as ``rloo/*``."""
    return {"rloo/" + name.split("/", 1)[1]: value for name, value in rollout_metrics(rollout, kl_coef).items()}


def rloo_update(models: Models, rollout: Rollout, config: RLOOConfig, optimizer, rt, should_stop
                ) -> tuple[dict[str, float], bool]:
    """``update_epochs`` passes over the rollout in minibatches. Returns (mean metrics, stopped early).
    When a minibatch holds whole groups (``minibatch_size`` a multiple of k), minibatches are drawn group by
    group, so that each group's prompt runs once in the forward and backward (``sequence_logprobs``'s
    ``group``); otherwise row by row."""
    policy = models.actor
    cliprange = config.cliprange if config.loss == "clipped" else math.inf  # unclipped: mean(−A·ρ)
    sums: dict[str, float] = {}
    steps = 0
    n = rollout.input_ids.size(0)
    device = rollout.input_ids.device
    group = config.k if config.minibatch_size % config.k == 0 and n % config.k == 0 else 1
    for _ in range(config.update_epochs):
        order = (torch.randperm(n // group, device=device)[:, None] * group
                 + torch.arange(group, device=device)).flatten()
        for start in range(0, n - config.minibatch_size + 1, config.minibatch_size):
            mb = rollout.rows(order[start:start + config.minibatch_size])
            logprobs, entropy = sequence_logprobs(policy, mb.input_ids, mb.attention_mask, mb.position_ids,
                                                  mb.n_prompt, config.temperature, with_entropy=True,
                                                  entropy_grad=False, group=group)
            loss, clipfrac, approx_kl = policy_loss(logprobs, mb.logprobs, mb.advantages, mb.mask, cliprange)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            ratio = torch.exp(logprobs.detach() - mb.logprobs)[mb.mask.bool()]
            metrics = {"rloo/policy_loss": loss.item(), "rloo/clipfrac": clipfrac.item(),
                       "rloo/approx_kl": approx_kl.item(), "rloo/entropy": masked_mean(entropy, mb.mask).item(),
                       "rloo/ratio_min": ratio.min().item() if ratio.numel() else 1.0,
                       "rloo/ratio_max": ratio.max().item() if ratio.numel() else 1.0}
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + value
            steps += 1
            if rt.any(should_stop()):
                return {k: v / steps for k, v in sums.items()}, True
    return {k: v / max(steps, 1) for k, v in sums.items()}, False


def train_rloo(config: RLOOConfig, prompts: Path, out: Path, *, reward_fn: RewardFn | None = None,
               eval_data: Path | None = None, on_log: OnLog = no_log, should_stop: ShouldStop = never_stop
               ) -> StageResult:
    """Optimise ``config.policy`` with RLOO against ``config.reward_model`` (or any ``reward_fn``) on the
    PPO-prompt file ``prompts``; the policy is saved to ``out`` with metrics.jsonl, samples.jsonl and
    summary.json. With ``eval_data`` (held-out prompts), PPO's ``eval/*`` metrics (score, judge, KL, length,
    EOS rate: ``training.ppo.held_out_metrics``) are logged before training, every ``eval_every`` iterations
    and at the end.

    Resumes from ``out/checkpoints/last.pt`` (with the same result as an uninterrupted run for a fixed
    seed); stops within one optimizer step when ``should_stop()`` is true.
    """
    out = Path(out)
    rt, records = start_rl(config, prompts)
    models = _load_models(config, reward_fn, rt)
    trainable = [p for p in models.actor.parameters() if p.requires_grad]
    optimizer = adamw(trainable, lr=config.learning_rate, betas=config.adam_betas, weight_decay=0.0)
    kl = KLController(config.kl_coef, config.adaptive_kl, config.kl_target, config.kl_horizon)
    checkpoint = out / CHECKPOINT
    start = 0
    if config.resume and checkpoint.exists():
        state = load_checkpoint(checkpoint, models.actor, optimizer, rt.device)
        start, kl.value = state["step"], state["beta"]
    reporter = Reporter(out, "rloo", config, on_log, main=rt.is_main, append=start > 0)

    def save(iteration: int) -> None:
        if rt.is_main:
            save_checkpoint(checkpoint, models.actor, optimizer, iteration, {"beta": kl.value})

    stage = RLStage(
        "rloo",
        rollout=lambda batch, beta, generator, timings: rloo_rollout(models, batch, config, beta, generator,
                                                                      reward_fn, timings),
        update=lambda rollout: rloo_update(models, rollout, config, optimizer, rt, should_stop),
        metrics=rloo_metrics, save=save, shown=config.k)
    run = run_rl_iterations(stage, config, models, records, kl, reporter, rt, start=start, out=out,
                            reward_fn=reward_fn, eval_data=eval_data, should_stop=should_stop)
    if rt.is_main:
        save_pretrained(unwrap(models.actor), models.tokenizer, out)
    rt.barrier()
    summary = {"iterations": run.iteration, "samples_per_prompt": config.k, "final_kl_coef": kl.value,
               "parameters": count_parameters(unwrap(models.actor)), **run.last, **run.held, **run.time_shares()}
    result = reporter.finish(run.status, run.iteration, summary, model=unwrap(models.actor))
    rt.close()
    return result
