"""Reward model from k-way rankings (InstructGPT, Ouyang et al. 2022, eq. 1).

For a prompt with k ranked responses, each response is scored once (k forward passes); the loss is
the mean of −log σ(r_better − r_worse) over the C(k,2) pairs, skipping ties, and the whole group is one
batch element. The scalar head reads the backbone's last hidden state at the last token of each
sequence: the response's final token (its EOS in the plain format), so it has seen the whole response.
After training, the head's bias is shifted so that demonstrations score mean 0.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from training.config import RewardConfig
from training.data import RankingExample, read_rankings, read_sft, split_by_hash
from training.encoding import encode_pair
from training.loop import CHECKPOINT, Loop, fit, make_optimizer
from training.models import add_lora, count_parameters, load_tokenizer, servable
from training.reporting import OnLog, Reporter, ShouldStop, StageResult, never_stop, no_log
from training.runtime import Runtime, init_runtime, seed_all, unwrap, wrap

HEAD_FILE = "reward_head.safetensors"
REWARD_CONFIG_FILE = "reward_config.json"


# --- the loss: small pure functions ---

def ranking_loss(rewards: torch.Tensor, ranks: Sequence[int], weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean −log σ(r_i − r_j) over the pairs where response i is ranked better than j (rank 1 = best;
    equal ranks are ties and are skipped).

    ``rewards``: 1-D tensor of k scores. ``ranks``: k ints. ``weights``: optional k×k per-comparison
    weights, symmetric (``weights[i][j]`` weighs the comparison of i and j); the mean is then weighted.
    """
    rank = torch.as_tensor(list(ranks), device=rewards.device)
    if rewards.dim() != 1 or rank.shape != rewards.shape:
        raise ValueError(f"rewards must be 1-D with one score per rank (got {tuple(rewards.shape)} and {len(rank)})")
    better = (rank[:, None] < rank[None, :]).to(rewards.dtype)
    if weights is not None:
        better = better * torch.as_tensor(weights, dtype=rewards.dtype, device=rewards.device)
    if better.sum() <= 0:
        raise ValueError("no comparison: every response has the same rank")
    losses = -F.logsigmoid(rewards[:, None] - rewards[None, :])
    return (losses * better).sum() / better.sum()


def pair_mask(ranks: torch.Tensor) -> torch.Tensor:
    """(B, K, K) bool: [b, i, j] is True when response i is ranked better than j. Rank 0 pads."""
    valid = ranks > 0
    return (ranks[:, :, None] < ranks[:, None, :]) & valid[:, :, None] & valid[:, None, :]


def batched_ranking_loss(rewards: torch.Tensor, ranks: torch.Tensor, weights: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """The trainer's form of ``ranking_loss``: ``rewards`` and ``ranks`` are (B, K) with rank 0 marking
    padding (groups of different k share a batch); each group's mean pairwise loss is one element,
    averaged over the batch with the optional (B,) example ``weights``."""
    better = pair_mask(ranks).to(rewards.dtype)
    losses = -F.logsigmoid(rewards[:, :, None] - rewards[:, None, :])
    pairs = better.sum(dim=(1, 2))
    per_group = (losses * better).sum(dim=(1, 2)) / pairs.clamp(min=1)
    w = (pairs > 0).to(rewards.dtype) * (weights if weights is not None else 1.0)
    return (per_group * w).sum() / w.sum().clamp(min=1e-12)


def pair_stats(rewards: torch.Tensor, ranks: torch.Tensor) -> tuple[float, float, float]:
    """(correctly ordered pairs, pairs, sum of margins r_better − r_worse) for a (B, K) batch."""
    better = pair_mask(ranks)
    margin = rewards[:, :, None] - rewards[:, None, :]
    return float((margin[better] > 0).sum()), float(better.sum()), float(margin[better].sum())


# --- the model ---

class RewardModel(torch.nn.Module):
    """A transformer backbone (no LM head) and a linear head giving one scalar per sequence."""

    def __init__(self, backbone: torch.nn.Module, chat_template: bool = False):
        super().__init__()
        self.backbone = backbone
        self.chat_template = chat_template
        hidden = backbone.config.hidden_size
        self.head = torch.nn.Linear(hidden, 1)
        torch.nn.init.normal_(self.head.weight, std=1 / (hidden + 1) ** 0.5)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,) rewards for right-padded sequences, read at each sequence's last real token."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(dim=1) - 1
        return self.head(hidden[torch.arange(len(last), device=last.device), last]).squeeze(-1)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str = "cpu") -> RewardModel:
        """A saved reward model, or a new head on any causal LM (its LM head is left out)."""
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(str(path), dtype=torch.float32)
        meta_file = Path(path) / REWARD_CONFIG_FILE
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        model = cls(backbone, chat_template=meta.get("chat_template", False))
        if (Path(path) / HEAD_FILE).exists():
            model.head.load_state_dict(load_file(str(Path(path) / HEAD_FILE)))
        return model.to(device)

    def save_pretrained(self, out: Path, tokenizer=None) -> None:
        out.mkdir(parents=True, exist_ok=True)
        servable(self.backbone).save_pretrained(out, safe_serialization=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(out / HEAD_FILE))
        (out / REWARD_CONFIG_FILE).write_text(json.dumps({"type": "training.reward.RewardModel",
                                                          "chat_template": self.chat_template}, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(out)


# --- batching ---

Encoded = tuple[list[list[int]], list[int], float]  # (k token sequences, ranks, weight)


def encode_ranking(tokenizer, example: RankingExample, config: RewardConfig) -> Encoded:
    seqs = [encode_pair(tokenizer, example.prompt, r, max_length=config.max_length, truncation=config.truncation,
                        chat_template=config.chat_template)[0] for r in example.responses]
    return seqs, list(example.ranks), example.weight


def collate_rankings(groups: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Every response of every group as one right-padded row; ``slots[b, i]`` is the row of group b's
    i-th response (−1 pads), ``ranks`` (0 pads) and ``weights`` are per group."""
    rows = [seq for seqs, _, _ in groups for seq in seqs]
    width, k_max = max(map(len, rows)), max(len(seqs) for seqs, _, _ in groups)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, seq in enumerate(rows):
        input_ids[i, :len(seq)], mask[i, :len(seq)] = torch.tensor(seq), 1
    slots = torch.full((len(groups), k_max), -1, dtype=torch.long)
    ranks = torch.zeros((len(groups), k_max), dtype=torch.long)
    row = 0
    for b, (seqs, group_ranks, _) in enumerate(groups):
        slots[b, :len(seqs)] = torch.arange(row, row + len(seqs))
        ranks[b, :len(seqs)] = torch.tensor(group_ranks)
        row += len(seqs)
    weights = torch.tensor([w for _, _, w in groups], dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": mask, "slots": slots, "ranks": ranks, "weights": weights}


def group_rewards(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    flat = model(batch["input_ids"], batch["attention_mask"])
    slots = batch["slots"]
    return torch.where(slots >= 0, flat[slots.clamp(min=0)], torch.zeros((), dtype=flat.dtype, device=flat.device))


def rm_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, int]:
    rewards = group_rewards(model, batch)
    loss = batched_ranking_loss(rewards, batch["ranks"], batch["weights"])
    correct, pairs, _ = pair_stats(rewards.detach(), batch["ranks"])
    return loss, {"train/accuracy": correct / max(pairs, 1)}, int(batch["attention_mask"].sum())


@torch.no_grad()
def evaluate_rankings(model: torch.nn.Module, groups: list[Encoded], pad_id: int, batch_size: int,
                      rt: Runtime) -> dict[str, float]:
    """Held-out ranking loss, pairwise accuracy (overall and per k), mean margin, reward mean and std."""
    model = unwrap(model)
    model.eval()
    mine = groups[rt.rank::rt.world_size]
    # Every rank sums the same names (per-k included) so that all_sum lines up.
    stats: dict[str, float] = {name: 0.0 for name in ("loss", "groups", "r_sum", "r_sq", "responses", "margin")}
    for k in {len(seqs) for seqs, _, _ in groups}:
        for key in ("", f"/k{k}"):
            stats["correct" + key] = stats["pairs" + key] = 0.0

    def add(name: str, value: float) -> None:
        stats[name] = stats.get(name, 0.0) + value

    for start in range(0, len(mine), batch_size):
        batch = {k: v.to(rt.device) for k, v in collate_rankings(mine[start:start + batch_size], pad_id).items()}
        rewards = group_rewards(model, batch)
        n = len(batch["weights"])
        add("loss", batched_ranking_loss(rewards, batch["ranks"], batch["weights"]).item() * n)
        add("groups", n)
        valid = batch["slots"] >= 0
        add("r_sum", float(rewards[valid].sum()))
        add("r_sq", float((rewards[valid] ** 2).sum()))
        add("responses", float(valid.sum()))
        for b in range(n):
            correct, pairs, margin = pair_stats(rewards[b:b + 1], batch["ranks"][b:b + 1])
            k = int(valid[b].sum())
            for key in ("", f"/k{k}"):
                add("correct" + key, correct)
                add("pairs" + key, pairs)
            add("margin", margin)
    names = sorted(stats)
    totals = dict(zip(names, rt.all_sum([stats[n] for n in names]), strict=True))
    mean = totals.get("r_sum", 0.0) / max(totals.get("responses", 0.0), 1)
    variance = totals.get("r_sq", 0.0) / max(totals.get("responses", 0.0), 1) - mean ** 2
    pairs = totals.get("pairs", 0.0)
    accuracy = totals.get("correct", 0.0) / max(pairs, 1)
    metrics = {
        "eval/loss": totals.get("loss", 0.0) / max(totals.get("groups", 0.0), 1),
        "eval/accuracy": accuracy,
        # Binomial standard error over the pairs (pairs of one ranking are not independent: a lower bound).
        "eval/accuracy_stderr": (accuracy * (1 - accuracy) / max(pairs, 1)) ** 0.5,
        "eval/margin": totals.get("margin", 0.0) / max(totals.get("pairs", 0.0), 1),
        "eval/reward_mean": mean, "eval/reward_std": max(variance, 0.0) ** 0.5,
        "eval/pairs": totals.get("pairs", 0.0),
    }
    for name in names:
        if name.startswith("correct/k"):
            k = name.split("/")[1]
            metrics[f"eval/accuracy_{k}"] = totals[name] / max(totals[f"pairs/{k}"], 1)
    return metrics


@torch.no_grad()
def score_pairs(model: RewardModel, tokenizer, pairs: list[tuple], *, max_length: int = 512,
                batch_size: int = 16) -> list[float]:
    """Rewards of (prompt, response) pairs, in order (the inference entry point)."""
    model.eval()
    device = next(model.parameters()).device
    seqs = [encode_pair(tokenizer, p, r, max_length=max_length, chat_template=model.chat_template)[0]
            for p, r in pairs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = collate_rankings([([seqs[i] for i in chunk], [1] * len(chunk), 1.0)], tokenizer.pad_token_id)
        for i, value in zip(chunk, model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).tolist(),
                            strict=True):
            out[i] = value
    return out


# --- the stage ---

def train_reward_model(config: RewardConfig, data: Path, out: Path, *, eval_data: Path | None = None,
                       demonstrations: Path | None = None, on_log: OnLog = no_log,
                       should_stop: ShouldStop = never_stop) -> StageResult:
    """Train a reward model on the ranking examples in ``data`` from ``config.base`` (an SFT model).

    The best model by held-out ranking loss is saved in ``out``; then its bias is set so that the
    demonstrations (SFT examples in ``demonstrations``, or else the best-ranked training responses)
    score mean 0, and the held-out metrics are measured again on the saved model.
    """
    out = Path(out)
    rt = init_runtime(config.device)
    seed_all(config.seed)

    examples = read_rankings(data)
    if eval_data is not None:
        train, held = examples, read_rankings(eval_data)
    else:
        train, held = split_by_hash(examples, config.eval_fraction)
    tokenizer = load_tokenizer(config.base)
    train_groups = [encode_ranking(tokenizer, e, config) for e in train]
    held_groups = [encode_ranking(tokenizer, e, config) for e in held]

    model = RewardModel.from_pretrained(config.base, rt.device)
    model.chat_template = config.chat_template
    if config.lora:
        model.backbone = add_lora(model.backbone, config, task_type="FEATURE_EXTRACTION")
    optimizer = make_optimizer(model, config)
    reporter = Reporter(out, "rm", config, on_log, main=rt.is_main,
                        append=config.resume and (out / CHECKPOINT).exists())
    pad = tokenizer.pad_token_id
    evaluate = (lambda m: evaluate_rankings(m, held_groups, pad, config.batch_size * 2, rt)) if held_groups else None
    loop = Loop(
        model=wrap(model, rt), optimizer=optimizer, lengths=[max(map(len, s)) * len(s) for s, _, _ in train_groups],
        collate=lambda ids: collate_rankings([train_groups[i] for i in ids], pad),
        loss=rm_step, evaluate=evaluate,
        save_model=lambda m: m.save_pretrained(out, tokenizer),
        group_by_length=config.group_by_length,
    )
    result = fit(loop, config, rt, out, reporter, should_stop)

    summary = {"train_examples": len(train_groups), "eval_examples": len(held_groups),
               "train_k": _k_counts(train), "parameters": count_parameters(model),
               "tokens": result.tokens, "train_seconds": round(result.train_seconds, 3),
               "comparisons_per_s": _comparisons_per_s(train, result, config, rt),
               "best_step": result.best_step, "best_eval_loss": result.best_eval_loss,
               **result.last_train}
    if result.status == "completed" and rt.is_main:
        final = RewardModel.from_pretrained(out, rt.device)
        if config.normalize:
            demos = ([(e.prompt, e.response) for e in read_sft(demonstrations)] if demonstrations is not None
                     else [(e.prompt, e.best_response()) for e in train])
            rewards = score_pairs(final, tokenizer, demos, max_length=config.max_length,
                                  batch_size=config.batch_size * 4)
            shift = sum(rewards) / len(rewards)
            with torch.no_grad():
                final.head.bias -= shift
            final.save_pretrained(out, tokenizer)
            summary.update({"demonstrations": len(demos), "bias_shift": shift})
        if held_groups:
            solo = Runtime(0, 1, rt.device)
            summary.update(evaluate_rankings(final, held_groups, pad, config.batch_size * 2, solo))
    rt.barrier()
    rt.close()
    return reporter.finish(result.status, result.steps, summary, model=unwrap(loop.model))


def _comparisons_per_s(train: list[RankingExample], result, config: RewardConfig, rt: Runtime) -> float:
    """Non-tied pairs trained on per second (the mean pairs per example times the examples seen)."""
    mean_pairs = sum(sum(1 for i in e.ranks for j in e.ranks if i < j) for e in train) / max(len(train), 1)
    seen = result.steps * config.batch_size * config.grad_accum * rt.world_size
    return mean_pairs * seen / max(result.train_seconds, 1e-9)


def _k_counts(examples: list[RankingExample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in examples:
        counts[str(e.k)] = counts.get(str(e.k), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0])))
