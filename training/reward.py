"""Reward model from k-way rankings (InstructGPT, Ouyang et al. 2022, eq. 1).

For a prompt with k ranked responses, each response is scored once (k forward passes); the loss is
the mean of −log σ(r_better − r_worse) over the C(k,2) pairs, skipping ties, and the whole group is one
batch element. The scalar head reads the backbone's last hidden state at the last token of each
sequence: the response's final token (its EOS in the plain format), so it has seen the whole response.
After training, the head's bias is shifted so that demonstrations score mean 0.

With ``train_layers`` = n only the top n transformer layers and the head learn. The frozen layers below
then compute the same hidden states at every epoch, so they run once per sequence (no gradient) and
their output is cached in memory; each step runs only the top n layers on the cached states. The maths
is that of training the same parameters on the full model; only the repeated frozen work is gone.
"""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from training.config import POOLINGS, RewardConfig
from training.data import RankingExample, read_sft, train_and_held_rankings
from training.encoding import encode_group, encode_pair
from training.loop import CHECKPOINT, Loop, fit, make_optimizer
from training.models import (
    add_lora,
    count_parameters,
    load_tokenizer,
    prefix_shared_passes,
    servable,
    shares_prefixes,
    train_top_layers,
)
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

    def __init__(self, backbone: torch.nn.Module, chat_template: bool = False, pooling: str = "last"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.backbone = backbone
        self.chat_template = chat_template
        self.pooling = pooling
        hidden = backbone.config.hidden_size
        self.head = torch.nn.Linear(hidden, 1)
        torch.nn.init.normal_(self.head.weight, std=1 / (hidden + 1) ** 0.5)
        torch.nn.init.zeros_(self.head.bias)

        self.split = 0  # layers below this index are frozen (see train_top)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                features: torch.Tensor | None = None, shared: dict[str, torch.Tensor] | None = None,
                response_start: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) rewards for right-padded sequences, read at each sequence's last real token (``pooling``
        "last") or averaged over its response, from ``response_start`` (each row's first response token) to
        its end ("mean"). With ``features`` (the frozen layers' output, from ``features``) only the layers
        above ``split`` run. With ``shared`` (a batch's shared-prefix layout, ``collate_rankings``) each
        group's common prefix runs once (``training.models.prefix_shared_passes``); ``input_ids`` is then
        not read, and a "mean" prefix must stop at the response."""
        if shared is not None:
            _, tail = prefix_shared_passes(self.backbone, shared)
            start = None
            if response_start is not None:
                start = response_start - shared["prefix_mask"].sum(dim=1)[shared["row_group"]]
                if bool((start < 0).any()):
                    raise ValueError("a shared prefix runs into the response: cap it at the prompt")
            return self.score(tail.last_hidden_state, shared["tail_mask"].sum(dim=1) - 1, start)
        if features is None:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                                   use_cache=False).last_hidden_state
        else:
            with self._only(self.backbone.layers[self.split:], self.backbone.norm):
                hidden = self.backbone(inputs_embeds=features, attention_mask=attention_mask,
                                       use_cache=False).last_hidden_state
        return self.score(hidden, attention_mask.sum(dim=1) - 1, response_start)

    def score(self, hidden: torch.Tensor, last: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) rewards from the final hidden states (B, T, hidden): the head on the state at each row's
        ``last`` position, or ("mean" pooling) on the mean state over positions ``start``..``last``."""
        rows = torch.arange(len(last), device=last.device)
        if self.pooling == "last":
            return self.head(hidden[rows, last]).squeeze(-1)
        if start is None:
            raise ValueError("mean pooling reads the response: pass each row's response_start")
        positions = torch.arange(hidden.size(1), device=hidden.device)[None, :]
        keep = ((positions >= start[:, None]) & (positions <= last[:, None])).to(hidden.dtype)
        pooled = (hidden * keep[..., None]).sum(dim=1) / keep.sum(dim=1, keepdim=True).clamp(min=1)
        return self.head(pooled).squeeze(-1)

    def train_top(self, n: int) -> None:
        """Freeze the embeddings and every layer but the top ``n``; check that running the frozen part
        and the rest separately gives the full model's rewards (a backbone whose forward treats
        ``inputs_embeds`` as more than the first layer's input, such as GPT-2 adding positions, fails)."""
        layers = getattr(self.backbone, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or not hasattr(self.backbone, "norm"):
            raise ValueError(f"train_layers needs a Llama-style backbone (layers + norm); "
                             f"{type(self.backbone).__name__} has none")
        self.split = train_top_layers(self.backbone, n)
        ids = torch.arange(3, 11, device=self.head.weight.device).unsqueeze(0)
        mask, start = torch.ones_like(ids), torch.zeros(1, dtype=torch.long, device=ids.device)
        with torch.no_grad():
            full = self(ids, mask, response_start=start)
            split = self(ids, mask, self.features(ids, mask), response_start=start)
        if not torch.allclose(full, split, atol=1e-4, rtol=1e-4):
            raise ValueError(f"train_layers is not supported for {type(self.backbone).__name__}: running its "
                             f"layers in two parts changes the output ({float(full[0]):.5f} vs {float(split[0]):.5f})")

    @torch.no_grad()
    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, with_cache: bool = False,
                 cache=None, position_ids: torch.Tensor | None = None):
        """The frozen layers' output (B, T, hidden): the input of layer ``split``. ``with_cache``: also
        return their key/value cache, and continue ``cache`` when given (``attention_mask`` then covers
        the cached tokens too)."""
        with self._only(self.backbone.layers[:self.split], torch.nn.Identity()):
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=with_cache, **({"cache": cache} if cache is not None else {}))
        return (out.last_hidden_state, out.cache) if with_cache else out.last_hidden_state

    @contextlib.contextmanager
    def _only(self, layers: torch.nn.ModuleList, norm: torch.nn.Module):
        saved = self.backbone.layers, self.backbone.norm
        self.backbone.layers, self.backbone.norm = layers, norm
        try:
            yield
        finally:
            self.backbone.layers, self.backbone.norm = saved

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str = "cpu") -> RewardModel:
        """A saved reward model, or a new head on any causal LM (its LM head is left out)."""
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(str(path), dtype=torch.float32)
        meta_file = Path(path) / REWARD_CONFIG_FILE
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        model = cls(backbone, chat_template=meta.get("chat_template", False), pooling=meta.get("pooling", "last"))
        if (Path(path) / HEAD_FILE).exists():
            model.head.load_state_dict(load_file(str(Path(path) / HEAD_FILE)))
        return model.to(device)

    def save_pretrained(self, out: Path, tokenizer=None) -> None:
        out.mkdir(parents=True, exist_ok=True)
        servable(self.backbone).save_pretrained(out, safe_serialization=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(out / HEAD_FILE))
        (out / REWARD_CONFIG_FILE).write_text(json.dumps({"type": "training.reward.RewardModel",
                                                          "chat_template": self.chat_template,
                                                          "pooling": self.pooling}, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(out)


# --- batching ---

Encoded = tuple[list[list[int]], list[int], float, int]  # (k token sequences, ranks, weight, prompt tokens)


def encode_ranking(tokenizer, example: RankingExample, config: RewardConfig) -> Encoded:
    seqs, n_prompt = encode_group(tokenizer, example.prompt, example.responses, max_length=config.max_length,
                                  truncation=config.truncation, chat_template=config.chat_template)
    return seqs, list(example.ranks), example.weight, n_prompt


SHARED_KEYS = ("prefix_ids", "prefix_mask", "tail_ids", "tail_mask", "row_group")
SHARED_WORTH = 5 / 6  # the shared-prefix layout's padded positions, at most this share of the plain layout's


def collate_rankings(groups: list[Encoded], pad_id: int, features: list[list[torch.Tensor]] | None = None,
                     share_prefix: bool | Sequence[int] = False) -> dict[str, torch.Tensor]:
    """Every response of every group as one right-padded row; ``slots[b, i]`` is the row of group b's
    i-th response (−1 pads), ``ranks`` (0 pads) and ``weights`` are per group. ``features`` (cached
    frozen-layer states, one (length, hidden) tensor per response) are padded alike. Groups that carry
    their prompt's length (``Encoded``'s fourth item; all or none) give each row's ``response_start``.

    ``share_prefix`` adds the shared-prefix layout of the same rows (``SHARED_KEYS``): each group's common
    prefix (its prompt, at least) once, left-padded (``prefix_ids``, ``prefix_mask``), and each row's rest,
    right-padded (``tail_ids``, ``tail_mask``; ``row_group`` is its group), for
    ``training.models.prefix_shared_passes``. Every tail keeps at least one token; a sequence of caps (one
    per group) stops each prefix there as well. Left out when some group shares no token, and when it would
    not save a sixth of the padded positions: prefixes and tails are padded separately, so a batch that
    mixes a long prompt with short answers and a short prompt with long ones can cost more than one
    rectangle (HH-RLHF's pairs, batched by length, do: 6 % more positions than the plain rows)."""
    rows = [seq for seqs, *_ in groups for seq in seqs]
    starts = [group[3] for group in groups] if all(len(group) > 3 for group in groups) else None
    width, k_max = max(map(len, rows)), max(len(seqs) for seqs, *_ in groups)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, seq in enumerate(rows):
        input_ids[i, :len(seq)], mask[i, :len(seq)] = torch.tensor(seq), 1
    extra = {}
    if features is not None:
        flat = [f for group in features for f in group]
        padded = torch.zeros((len(rows), width, flat[0].shape[-1]), dtype=flat[0].dtype)
        for i, f in enumerate(flat):
            padded[i, :len(f)] = f
        extra["features"] = padded
    if starts is not None:
        extra["response_start"] = torch.tensor([n for (seqs, *_), n in zip(groups, starts, strict=True)
                                                for _ in seqs], dtype=torch.long)
    if share_prefix is not False:  # a known prompt caps the prefix: the responses stay whole in the tails
        caps = (starts or [None] * len(groups)) if share_prefix is True else list(share_prefix)
        extra.update(_shared_layout([seqs for seqs, *_ in groups], caps, pad_id))
    slots = torch.full((len(groups), k_max), -1, dtype=torch.long)
    ranks = torch.zeros((len(groups), k_max), dtype=torch.long)
    row = 0
    for b, (seqs, group_ranks, *_) in enumerate(groups):
        slots[b, :len(seqs)] = torch.arange(row, row + len(seqs))
        ranks[b, :len(seqs)] = torch.tensor(group_ranks)
        row += len(seqs)
    weights = torch.tensor([group[2] for group in groups], dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": mask, "slots": slots, "ranks": ranks, "weights": weights,
            **extra}


def _shared_layout(groups: list[list[list[int]]], caps: list[int | None], pad_id: int) -> dict[str, torch.Tensor]:
    lengths = [min(_common_prefix(seqs), min(map(len, seqs)) - 1, cap if cap is not None else len(seqs[0]))
               for seqs, cap in zip(groups, caps, strict=True)]
    if min(lengths) < 1:
        return {}
    tails = [seq[n:] for seqs, n in zip(groups, lengths, strict=True) for seq in seqs]
    width, tail_width = max(lengths), max(map(len, tails))
    plain = len(tails) * max(len(seq) for seqs in groups for seq in seqs)
    if len(groups) * width + len(tails) * tail_width > SHARED_WORTH * plain:
        return {}
    prefix_ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((len(groups), width), dtype=torch.long)
    for g, (seqs, n) in enumerate(zip(groups, lengths, strict=True)):
        prefix_ids[g, width - n:], prefix_mask[g, width - n:] = torch.tensor(seqs[0][:n]), 1
    tail_ids = torch.full((len(tails), tail_width), pad_id, dtype=torch.long)
    tail_mask = torch.zeros((len(tails), tail_width), dtype=torch.long)
    for i, tail in enumerate(tails):
        tail_ids[i, :len(tail)], tail_mask[i, :len(tail)] = torch.tensor(tail), 1
    row_group = torch.tensor([g for g, seqs in enumerate(groups) for _ in seqs], dtype=torch.long)
    return {"prefix_ids": prefix_ids, "prefix_mask": prefix_mask, "tail_ids": tail_ids, "tail_mask": tail_mask,
            "row_group": row_group}


@torch.no_grad()
def cache_features(model: RewardModel, groups: list[Encoded], pad_id: int, on_progress=None,
                   memo: dict | None = None) -> list[list[torch.Tensor]]:
    """The frozen layers' states for every response of every group (CPU tensors, one per response).

    The k responses of a ranking share their prompt, and in a causal model the shared tokens' states do
    not depend on what follows: the common prefix runs once and the k continuations run as one batch on
    its key/value cache. ``memo`` (token tuple → states) shares the work across runs with the same base
    and ``train_layers`` (learning curves, sweeps).
    """
    model.eval()
    device = model.head.weight.device
    memo = memo if memo is not None else {}
    out: list[list[torch.Tensor | None]] = [[memo.get(tuple(seq)) for seq in group] for group, *_ in groups]
    todo = [g for g, row in enumerate(out) if any(f is None for f in row)]
    total = sum(len(groups[g][0]) for g in todo)
    done = 0
    for g in todo:
        seqs = groups[g][0]
        states = _prefix_shared_features(model, seqs, pad_id, device)
        for i, (seq, state) in enumerate(zip(seqs, states, strict=True)):
            out[g][i] = memo[tuple(seq)] = state
        done += len(seqs)
        if on_progress is not None:
            on_progress(done, total)
    return out


def _prefix_shared_features(model: RewardModel, seqs: list[list[int]], pad_id: int,
                            device: torch.device) -> list[torch.Tensor]:
    shared = min(_common_prefix(seqs), min(map(len, seqs)) - 1)  # every continuation keeps >= 1 token
    if len(seqs) == 1 or shared < 8:
        batch = collate_rankings([(seqs, [1] * len(seqs), 1.0)], pad_id)
        states = model.features(batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu()
        return [states[i, :len(seq)].clone() for i, seq in enumerate(seqs)]
    prefix = torch.tensor([seqs[0][:shared]], device=device)
    head, cache = model.features(prefix, torch.ones_like(prefix), with_cache=True)
    cache.batch_repeat_interleave(len(seqs))
    tails = collate_rankings([([seq[shared:] for seq in seqs], [1] * len(seqs), 1.0)], pad_id)
    mask = torch.cat([torch.ones((len(seqs), shared), dtype=torch.long), tails["attention_mask"]], dim=1)
    positions = torch.arange(shared, shared + tails["input_ids"].shape[1]).unsqueeze(0)
    rest, _ = model.features(tails["input_ids"].to(device), mask.to(device), with_cache=True, cache=cache,
                             position_ids=positions.to(device))
    head, rest = head[0].cpu(), rest.cpu()
    return [torch.cat([head, rest[i, :len(seq) - shared]]).clone() for i, seq in enumerate(seqs)]


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(map(len, seqs))
    for i in range(n):
        if any(seq[i] != seqs[0][i] for seq in seqs[1:]):
            return i
    return n


def group_rewards(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, K) rewards of each group's responses (0 on padding). A batch with the shared-prefix layout runs
    each group's prompt once when the backbone allows it (``shares_prefixes``)."""
    shared = None
    if "row_group" in batch and "features" not in batch and shares_prefixes(unwrap(model).backbone):
        shared = {key: batch[key] for key in SHARED_KEYS}
    flat = model(batch["input_ids"], batch["attention_mask"], batch.get("features"), shared=shared,
                 response_start=batch.get("response_start"))
    slots = batch["slots"]
    return torch.where(slots >= 0, flat[slots.clamp(min=0)], torch.zeros((), dtype=flat.dtype, device=flat.device))


def rm_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, int]:
    rewards = group_rewards(model, batch)
    loss = batched_ranking_loss(rewards, batch["ranks"], batch["weights"])
    correct, pairs, _ = pair_stats(rewards.detach(), batch["ranks"])
    return loss, {"train/accuracy": correct / max(pairs, 1)}, int(batch["attention_mask"].sum())


@torch.no_grad()
def evaluate_rankings(model: torch.nn.Module, groups: list[Encoded], pad_id: int, batch_size: int,
                      rt: Runtime, features: list[list[torch.Tensor]] | None = None) -> dict[str, float]:
    """Held-out ranking loss, pairwise accuracy (overall and per k), mean margin, reward mean and std."""
    model = unwrap(model)
    model.eval()
    mine = groups[rt.rank::rt.world_size]
    my_features = features[rt.rank::rt.world_size] if features is not None else None
    # Every rank sums the same names (per-k included) so that all_sum lines up.
    stats: dict[str, float] = {name: 0.0 for name in ("loss", "groups", "r_sum", "r_sq", "responses", "margin")}
    for k in {len(seqs) for seqs, *_ in groups}:
        for key in ("", f"/k{k}"):
            stats["correct" + key] = stats["pairs" + key] = 0.0

    def add(name: str, value: float) -> None:
        stats[name] = stats.get(name, 0.0) + value

    for start in range(0, len(mine), batch_size):
        cached = my_features[start:start + batch_size] if my_features is not None else None
        batch = {k: v.to(rt.device) for k, v in collate_rankings(mine[start:start + batch_size], pad_id,
                                                                 cached, share_prefix=cached is None).items()}
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
    encoded = [encode_pair(tokenizer, p, r, max_length=max_length, chat_template=model.chat_template)
               for p, r in pairs]
    return score_encoded(model, encoded, tokenizer.pad_token_id, batch_size)


@torch.no_grad()
def score_encoded(model: RewardModel, encoded: list[tuple[list[int], int]], pad_id: int,
                  batch_size: int = 16) -> list[float]:
    """Rewards of encoded (prompt + response ids, prompt tokens) sequences, in order, batched by length."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    out = [0.0] * len(encoded)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = collate_rankings([([encoded[i][0]], [1], 1.0, encoded[i][1]) for i in chunk], pad_id)
        values = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                       response_start=batch["response_start"].to(device))
        for i, value in zip(chunk, values.tolist(), strict=True):
            out[i] = value
    return out


# --- the stage ---

def train_reward_model(config: RewardConfig, data: Path, out: Path, *, eval_data: Path | None = None,
                       demonstrations: Path | None = None, on_log: OnLog = no_log,
                       should_stop: ShouldStop = never_stop, feature_memo: dict | None = None) -> StageResult:
    """Train a reward model on the ranking examples in ``data`` from ``config.base`` (an SFT model).

    The best model by held-out ranking loss is saved in ``out``; then its bias is set so that the
    demonstrations (SFT examples in ``demonstrations``, or else the best-ranked training responses)
    score mean 0, and the held-out metrics are measured again on the saved model. ``feature_memo``: see
    ``cache_features``.
    """
    out = Path(out)
    rt = init_runtime(config.device)
    seed_all(config.seed)

    train, held = train_and_held_rankings(data, eval_data, config.eval_fraction)
    tokenizer = load_tokenizer(config.base)
    train_groups = [encode_ranking(tokenizer, e, config) for e in train]
    held_groups = [encode_ranking(tokenizer, e, config) for e in held]

    model = RewardModel.from_pretrained(config.base, rt.device)
    model.chat_template, model.pooling = config.chat_template, config.pooling
    if config.lora:
        model.backbone = add_lora(model.backbone, config, task_type="FEATURE_EXTRACTION")
    if config.cached_layers is not None:
        model.train_top(config.cached_layers)
    optimizer = make_optimizer(model, config)
    reporter = Reporter(out, "rm", config, on_log, main=rt.is_main,
                        append=config.resume and (out / CHECKPOINT).exists())
    pad = tokenizer.pad_token_id
    train_features = held_features = None
    cache_seconds = 0.0
    if config.cached_layers is not None:
        started = time.perf_counter()
        progress = _cache_progress(reporter)
        train_features = cache_features(model, train_groups, pad, progress, feature_memo)
        cache_seconds = time.perf_counter() - started
        held_features = cache_features(model, held_groups, pad, progress, feature_memo)
    evaluate = (lambda m: evaluate_rankings(m, held_groups, pad, config.batch_size * 2, rt, held_features)
                ) if held_groups else None
    loop = Loop(
        model=wrap(model, rt), optimizer=optimizer, lengths=[max(map(len, s)) * len(s) for s, *_ in train_groups],
        collate=lambda ids: collate_rankings([train_groups[i] for i in ids], pad,
                                             [train_features[i] for i in ids] if train_features else None,
                                             share_prefix=not train_features),
        loss=rm_step, evaluate=evaluate,
        save_model=lambda m: m.save_pretrained(out, tokenizer),
        group_by_length=config.group_by_length,
    )
    result = fit(loop, config, rt, out, reporter, should_stop)

    summary = {"train_examples": len(train_groups), "eval_examples": len(held_groups),
               "train_k": _k_counts(train), "parameters": count_parameters(model),
               "trainable_parameters": count_parameters(model, trainable_only=True),
               "tokens": result.tokens, "train_seconds": round(result.train_seconds, 3),
               "cache_seconds": round(cache_seconds, 3),
               "comparisons_per_s": _comparisons_per_s(train, result, config, rt, cache_seconds),
               "best_step": result.best_step, "best_eval_loss": result.best_eval_loss,
               **result.last_train}
    if result.status == "completed" and rt.is_main:
        final = RewardModel.from_pretrained(out, rt.device)
        if config.cached_layers is not None:
            final.train_top(config.cached_layers)
        if config.normalize:
            if demonstrations is None and train_features is not None:
                best = [(g, e.ranks.index(min(e.ranks))) for g, e in enumerate(train)]
                rewards = score_cached(final, [train_groups[g][0][i] for g, i in best],
                                       [train_features[g][i] for g, i in best], pad, config.batch_size * 4,
                                       starts=[train_groups[g][3] for g, _ in best])
                count = len(best)
            else:
                demos = ([(e.prompt, e.response) for e in read_sft(demonstrations)] if demonstrations is not None
                         else [(e.prompt, e.best_response()) for e in train])
                rewards = score_pairs(final, tokenizer, demos, max_length=config.max_length,
                                      batch_size=config.batch_size * 4)
                count = len(demos)
            shift = sum(rewards) / len(rewards)
            with torch.no_grad():
                final.head.bias -= shift
            final.save_pretrained(out, tokenizer)
            summary.update({"demonstrations": count, "bias_shift": shift})
        if held_groups:
            solo = Runtime(0, 1, rt.device)
            summary.update(evaluate_rankings(final, held_groups, pad, config.batch_size * 2, solo, held_features))
    rt.barrier()
    rt.close()
    return reporter.finish(result.status, result.steps, summary, model=unwrap(loop.model))


def _cache_progress(reporter: Reporter):
    """Logs the frozen-layer cache's progress (step 0) about every tenth of the way."""
    last = [-1]

    def progress(done: int, total: int) -> None:
        tenth = done * 10 // total
        if tenth != last[0]:
            last[0] = tenth
            reporter.log(0, 0, {"cache/sequences": done, "cache/total": total})
    return progress


@torch.no_grad()
def score_cached(model: RewardModel, seqs: list[list[int]], features: list[torch.Tensor], pad_id: int,
                 batch_size: int, starts: list[int] | None = None) -> list[float]:
    """Rewards of token sequences whose frozen-layer states are cached, in order; ``starts``: each
    sequence's first response token (needed by "mean" pooling)."""
    model.eval()
    device = model.head.weight.device
    out: list[float] = []
    for start in range(0, len(seqs), batch_size):
        chunk = list(range(start, min(start + batch_size, len(seqs))))
        groups = [([seqs[i]], [1], 1.0) + ((starts[i],) if starts is not None else ()) for i in chunk]
        batch = collate_rankings(groups, pad_id, [[features[i]] for i in chunk])
        start_of = batch["response_start"].to(device) if starts is not None else None
        out += model(*(batch[k].to(device) for k in ("input_ids", "attention_mask", "features")),
                     response_start=start_of).tolist()
    return out


def _comparisons_per_s(train: list[RankingExample], result, config: RewardConfig, rt: Runtime,
                       cache_seconds: float = 0.0) -> float:
    """Non-tied pairs trained on per second (the mean pairs per example times the examples seen), the
    time spent caching the training data's frozen-layer states included."""
    mean_pairs = sum(sum(1 for i in e.ranks for j in e.ranks if i < j) for e in train) / max(len(train), 1)
    seen = result.steps * config.batch_size * config.grad_accum * rt.world_size
    return mean_pairs * seen / max(result.train_seconds + cache_seconds, 1e-9)


def _k_counts(examples: list[RankingExample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in examples:
        counts[str(e.k)] = counts.get(str(e.k), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0])))
