"""DPO straight from k-way rankings (Rafailov et al. 2023), with no reward model: the policy's implicit
reward r = β·(log π(y|x) − log π_ref(y|x)) is trained to explain each ranking, either as a whole
(Plackett–Luce, ties grouped: ``listwise_dpo_loss``) or pair by pair (``pairwise_dpo_loss``). For k = 2
without ties both are DPO's −log σ(r_chosen − r_rejected).

The reference is the SFT model the policy starts from, frozen. Its log-probs never change, so they are
computed once, before training, for every response; a step then runs only the policy. The data are the
reward model's rankings file, encoded as the reward model encodes it (``encode_group``: the k responses
of a ranking see the same prompt tokens). The loop is the shared one (``training.loop.fit``): the same
schedule, checkpoints, resume, best model by held-out loss and progress callback as SFT and the RM.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from training.config import DPOConfig
from training.data import RankingExample, train_and_held_rankings
from training.encoding import encode_group
from training.loop import CHECKPOINT, Loop, fit, make_optimizer
from training.models import (
    add_lora,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    save_pretrained,
    shares_prefixes,
    tail_token_logits,
)
from training.reporting import OnLog, Reporter, ShouldStop, StageResult, never_stop, no_log
from training.reward import collate_rankings, pair_mask, pair_stats
from training.runtime import Runtime, init_runtime, seed_all, unwrap, wrap
from training.sft import IGNORE, collate_lm

# --- the losses: small pure functions -----------------------------------------------------------------

def implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward β·(log π(y|x) − log π_ref(y|x)), from summed response log-probs."""
    return beta * (policy_logps - ref_logps)


def _batched(policy_logps, ref_logps, ranks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(B, K) views of one ranking's (K,) inputs or a batch's (B, K); ranks as a tensor; was it one?"""
    ranks = torch.as_tensor(ranks, device=policy_logps.device)
    if policy_logps.shape != ref_logps.shape or policy_logps.shape != ranks.shape or policy_logps.dim() not in (1, 2):
        raise ValueError(f"policy_logps, ref_logps and ranks must share a (K,) or (B, K) shape, got "
                         f"{tuple(policy_logps.shape)}, {tuple(ref_logps.shape)} and {tuple(ranks.shape)}")
    single = policy_logps.dim() == 1
    if single:
        policy_logps, ref_logps, ranks = policy_logps[None], ref_logps[None], ranks[None]
    return policy_logps, ref_logps, ranks, single


def listwise_dpo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, ranks: torch.Tensor | Sequence[int],
                      beta: float) -> torch.Tensor:
    """The negative log-likelihood of each ranking under Plackett–Luce on the implicit rewards
    r_i = β·(policy_logps_i − ref_logps_i), with ties grouped.

    ``policy_logps``, ``ref_logps``: summed log-probs of each response, (K,) for one ranking or (B, K) for a
    batch. ``ranks``: same shape, 1 = best, equal ranks are a tie, 0 marks padding (rankings of different k
    share a batch; padded entries take part in nothing and may hold any finite value). Returns one loss per
    ranking: a scalar for (K,) inputs, (B,) for a batch.

    Let the ranking's tied groups be G_1 (best), …, G_m (worst) and R_s = G_s ∪ G_{s+1} ∪ … ∪ G_m the
    responses not ranked above group s. Then

        loss = − Σ_s Σ_{i ∈ G_s} [ r_i − log Σ_{j ∈ R_s} exp(r_j) ]

    Without ties this is Plackett–Luce: the best response is chosen from all k, the next from the rest, and
    so on (the last choice, from one response, adds log 1 = 0). For k = 2 it is DPO's −log σ(r_1 − r_2).

    Ties: each member of a tied group is chosen against its own group plus everything worse. This is
    Breslow's (1974) treatment of tied event times in the Cox partial likelihood, whose algebra PL shares.
    It claims no order inside the group (every member faces the same competitors, so the terms are
    symmetric in them), and it reads a tie as "equally good": a group's terms are largest when its
    members' rewards are equal. So with ties the loss cannot reach 0; its floor is Σ_s |G_s|·log|G_s|,
    approached as every group's rewards are equal and far above the groups below. (The exact likelihood of
    a tied ranking, summed over every order inside each group, costs |G|! terms or an alternating
    inclusion–exclusion sum; Breslow's is the standard closed form.)
    """
    policy_logps, ref_logps, ranks, single = _batched(policy_logps, ref_logps, ranks)
    valid = ranks > 0
    rewards = torch.where(valid, implicit_rewards(policy_logps, ref_logps, beta), 0.0)
    k = ranks.size(1)
    # competes[b, i, j]: response j is in response i's choice set R_s (not ranked above i; i itself included).
    # A padding slot competes only with itself, so its term is exactly 0 and nothing is -inf everywhere.
    competes = (ranks[:, None, :] >= ranks[:, :, None]) & valid[:, None, :] & valid[:, :, None]
    competes = competes | torch.eye(k, dtype=torch.bool, device=ranks.device)
    log_norm = rewards[:, None, :].expand(-1, k, -1).masked_fill(~competes, float("-inf")).logsumexp(dim=-1)
    loss = -torch.where(valid, rewards - log_norm, 0.0).sum(dim=-1)
    return loss[0] if single else loss


def pairwise_dpo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, ranks: torch.Tensor | Sequence[int],
                      beta: float) -> torch.Tensor:
    """Plain DPO on every pair of a ranking whose ranks differ: the mean of −log σ(r_better − r_worse) over
    those pairs (ties and padding skipped), one loss per ranking, as the reward model's InstructGPT loss
    treats a ranking (``training.reward.batched_ranking_loss``): each ranking counts once, however many pairs
    it holds. Shapes as ``listwise_dpo_loss``."""
    policy_logps, ref_logps, ranks, single = _batched(policy_logps, ref_logps, ranks)
    rewards = torch.where(ranks > 0, implicit_rewards(policy_logps, ref_logps, beta), 0.0)
    better = pair_mask(ranks).to(rewards.dtype)
    losses = -F.logsigmoid(rewards[:, :, None] - rewards[:, None, :])
    loss = (losses * better).sum(dim=(1, 2)) / better.sum(dim=(1, 2)).clamp(min=1)
    return loss[0] if single else loss


LOSSES = {"listwise": listwise_dpo_loss, "pairwise": pairwise_dpo_loss}


# --- log-probs and batches ------------------------------------------------------------------------------

Encoded = tuple[list[list[int]], int, list[int], float]  # (k token sequences, prompt tokens, ranks, weight)


def encode_ranking(tokenizer, example: RankingExample, config: DPOConfig) -> Encoded:
    seqs, n_prompt = encode_group(tokenizer, example.prompt, example.responses, max_length=config.max_length,
                                  truncation=config.truncation, chat_template=config.chat_template)
    return seqs, n_prompt, list(example.ranks), example.weight


def collate_dpo(groups: list[Encoded], pad_id: int, ref_logps: list[list[float]] | None = None
                ) -> dict[str, torch.Tensor]:
    """The reward model's batch (every response a right-padded row; ``slots``, ``ranks`` and ``weights`` per
    ranking), plus SFT's ``labels`` (the response tokens; prompt and padding ignored) and, when given, the
    precomputed reference log-probs as (B, K) ``ref_logps`` (0 on padding). Also the shared-prefix layout
    (each ranking's prompt once: ``collate_rankings``'s ``share_prefix``, stopped at the prompt) with its
    ``tail_labels``: each tail token that is a response token, else ignored."""
    batch = collate_rankings([(seqs, ranks, weight, n_prompt) for seqs, n_prompt, ranks, weight in groups], pad_id,
                             share_prefix=True)
    rows = [(seq, n_prompt) for seqs, n_prompt, _, _ in groups for seq in seqs]
    batch["labels"] = collate_lm(rows, pad_id)["labels"]
    if "row_group" in batch:
        shared = batch["prefix_mask"].sum(dim=1).tolist()
        labels = torch.where(batch["tail_mask"].bool(), batch["tail_ids"], IGNORE)
        for row, (_, n_prompt) in enumerate(rows):
            before = n_prompt - shared[int(batch["row_group"][row])]  # prompt tokens left in this tail
            labels[row, :max(before, 0)] = IGNORE
        batch["tail_labels"] = labels
    if ref_logps is not None:
        padded = torch.zeros(batch["ranks"].shape, dtype=torch.float32)
        for b, values in enumerate(ref_logps):
            padded[b, :len(values)] = torch.tensor(values)
        batch["ref_logps"] = padded
    return batch


def response_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, K) summed log π(response | prompt) of each ranking's responses (0 on padding). With the
    shared-prefix layout and a model that allows it (``shares_prefixes``: not under DDP), each ranking's
    prompt runs once, in the forward and the backward: its k responses then run on its KV cache."""
    if "row_group" in batch and batch["tail_ids"].size(1) > 1 and shares_prefixes(model):
        logits, labels = tail_token_logits(model, batch), batch["tail_labels"]
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
    token_nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                ignore_index=IGNORE, reduction="none").view(labels.shape)
    flat = -token_nll.sum(dim=1)
    slots = batch["slots"]
    return torch.where(slots >= 0, flat[slots.clamp(min=0)], 0.0)


@torch.no_grad()
def reference_logps(model: torch.nn.Module, groups: list[Encoded], pad_id: int, batch_size: int,
                    device: torch.device) -> list[list[float]]:
    """Every response's summed log-prob under the (frozen) reference, once, in ranking order."""
    model.eval()
    out: list[list[float]] = []
    for start in range(0, len(groups), batch_size):
        chunk = groups[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate_dpo(chunk, pad_id).items()}
        logps = response_logps(model, batch).cpu()
        out += [logps[b, :len(seqs)].tolist() for b, (seqs, _, _, _) in enumerate(chunk)]
    return out


def dpo_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], config: DPOConfig
             ) -> tuple[torch.Tensor, dict[str, float], int]:
    """One micro-batch: the rankings' weighted mean loss, and the implicit rewards' pair accuracy and margin."""
    # ``fit`` switches the model to train mode; DPO runs it in eval mode (no dropout) so that the policy's
    # log-probs are the same function as the reference's, which were taken without dropout (see
    # training.ppo._without_dropout). Eval mode does not stop gradients.
    model.eval()
    policy = response_logps(model, batch)
    losses = LOSSES[config.loss](policy, batch["ref_logps"], batch["ranks"], config.beta)
    weights = batch["weights"]
    loss = (losses * weights).sum() / weights.sum()
    rewards = implicit_rewards(policy.detach(), batch["ref_logps"], config.beta)
    correct, pairs, margin = pair_stats(rewards, batch["ranks"])
    return loss, {"train/accuracy": correct / max(pairs, 1), "train/margin": margin / max(pairs, 1)}, \
        int(batch["attention_mask"].sum())


@torch.no_grad()
def evaluate_rankings(model: torch.nn.Module, groups: list[Encoded], ref_logps: list[list[float]], pad_id: int,
                      config: DPOConfig, rt: Runtime) -> dict[str, float]:
    """Held-out loss (weighted mean over rankings), implicit-reward pair accuracy overall and per k, and the
    mean margin r_better − r_worse; each rank takes every world_size-th ranking."""
    model = unwrap(model)
    model.eval()
    stats = {"loss": 0.0, "weight": 0.0, "correct": 0.0, "pairs": 0.0, "margin": 0.0}
    for k in sorted({len(seqs) for seqs, _, _, _ in groups}):  # the same names on every rank, for all_sum
        stats[f"correct/k{k}"] = stats[f"pairs/k{k}"] = 0.0
    mine = list(range(rt.rank, len(groups), rt.world_size))
    for start in range(0, len(mine), config.batch_size * 2):
        index = mine[start:start + config.batch_size * 2]
        batch = collate_dpo([groups[i] for i in index], pad_id, [ref_logps[i] for i in index])
        batch = {k: v.to(rt.device) for k, v in batch.items()}
        policy = response_logps(model, batch)
        losses = LOSSES[config.loss](policy, batch["ref_logps"], batch["ranks"], config.beta)
        stats["loss"] += float((losses * batch["weights"]).sum())
        stats["weight"] += float(batch["weights"].sum())
        rewards = implicit_rewards(policy, batch["ref_logps"], config.beta)
        for b, i in enumerate(index):
            correct, pairs, margin = pair_stats(rewards[b:b + 1], batch["ranks"][b:b + 1])
            k = len(groups[i][0])
            for key in ("", f"/k{k}"):
                stats["correct" + key] += correct
                stats["pairs" + key] += pairs
            stats["margin"] += margin
    names = sorted(stats)
    totals = dict(zip(names, rt.all_sum([stats[n] for n in names]), strict=True))
    metrics = {"eval/loss": totals["loss"] / max(totals["weight"], 1e-12),
               "eval/accuracy": totals["correct"] / max(totals["pairs"], 1),
               "eval/margin": totals["margin"] / max(totals["pairs"], 1), "eval/pairs": totals["pairs"]}
    for name in names:
        if name.startswith("correct/k"):
            k = name.split("/")[1]
            metrics[f"eval/accuracy_{k}"] = totals[name] / max(totals[f"pairs/{k}"], 1)
    return metrics


# --- the stage --------------------------------------------------------------------------------------------

def train_dpo(config: DPOConfig, data: Path, out: Path, *, eval_data: Path | None = None, on_log: OnLog = no_log,
              should_stop: ShouldStop = never_stop) -> StageResult:
    """Train ``config.base`` (the SFT model, also the frozen reference) with DPO on the ranking examples in
    ``data`` (the reward model's contract); the best policy by held-out loss on ``eval_data`` (or the
    record-hash held-out split) is saved in ``out``. Metrics: ``train/loss``, ``train/accuracy`` and
    ``train/margin`` (implicit-reward pairs), ``eval/loss``, ``eval/accuracy`` (overall and per k),
    ``eval/margin``. Resumes from ``out/checkpoints/last.pt`` with the same weights as an uninterrupted run."""
    out = Path(out)
    rt = init_runtime(config.device)
    seed_all(config.seed)

    train, held = train_and_held_rankings(data, eval_data, config.eval_fraction)
    tokenizer = load_tokenizer(config.base)
    pad = tokenizer.pad_token_id
    train_groups = [encode_ranking(tokenizer, e, config) for e in train]
    held_groups = [encode_ranking(tokenizer, e, config) for e in held]

    model = load_causal_lm(config.base, rt.device)
    # The reference is the model as loaded: its log-probs are taken now, before any adapter or step.
    train_ref = reference_logps(model, train_groups, pad, config.batch_size * 2, rt.device)
    held_ref = reference_logps(model, held_groups, pad, config.batch_size * 2, rt.device)
    if config.lora:
        model = add_lora(model, config)
    optimizer = make_optimizer(model, config)
    reporter = Reporter(out, "dpo", config, on_log, main=rt.is_main,
                        append=config.resume and (out / CHECKPOINT).exists())
    loop = Loop(
        model=wrap(model, rt), optimizer=optimizer,
        lengths=[max(map(len, seqs)) * len(seqs) for seqs, _, _, _ in train_groups],
        collate=lambda ids: collate_dpo([train_groups[i] for i in ids], pad, [train_ref[i] for i in ids]),
        loss=lambda m, batch: dpo_step(m, batch, config),
        evaluate=(lambda m: evaluate_rankings(m, held_groups, held_ref, pad, config, rt)) if held_groups else None,
        save_model=lambda m: save_pretrained(m, tokenizer, out),
        group_by_length=config.group_by_length,
    )
    result = fit(loop, config, rt, out, reporter, should_stop)
    rt.close()
    return reporter.finish(result.status, result.steps, {
        "train_examples": len(train_groups), "eval_examples": len(held_groups), "loss": config.loss,
        "train_k": {str(k): n for k, n in sorted(Counter(e.k for e in train).items())},
        "parameters": count_parameters(model), "trainable_parameters": count_parameters(model, True),
        "tokens": result.tokens,
        "train_seconds": round(result.train_seconds, 3), "best_step": result.best_step,
        "best_eval_loss": result.best_eval_loss, **result.last_train, **result.last_eval}, model=unwrap(loop.model))

