"""The optimisation loop shared by pretraining, SFT and the reward model, and its small pure parts.

A stage prepares data, model and a loss; ``fit`` then runs, in nanoGPT's order: schedule →
forward/backward over ``grad_accum`` micro-batches → clip → step → periodic eval, best model and
checkpoint. The data order is a pure function of (seed, epoch), and the checkpoint holds the optimizer
and RNG states, so a resumed run continues exactly where the interrupted one stopped.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.config import TrainConfig
from training.reporting import Reporter, ShouldStop
from training.runtime import Runtime, unwrap

CHECKPOINT = Path("checkpoints") / "last.pt"


def lr_at(step: int, *, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to ``min_ratio * peak``."""
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = peak * min_ratio
    return floor + 0.5 * (1 + math.cos(math.pi * progress)) * (peak - floor)


def adamw(params: list, **options) -> torch.optim.AdamW:
    """AdamW over ``params`` (tensors, or param groups), fused into one kernel where torch has one for their
    device and dtype (CPU and CUDA): on this 2-core CPU it steps SmolLM2-135M's 134.5M parameters in about
    0.1 s, against 0.6–0.7 s for the default multi-tensor loop."""
    tensors = [t for item in params for t in (item["params"] if isinstance(item, dict) else [item])]
    fused = bool(tensors) and all(t.device.type in ("cpu", "cuda") and t.is_floating_point() for t in tensors)
    return torch.optim.AdamW(params, fused=fused or None, **options)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases, norms and scalar gains are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    keep = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return adamw(groups, lr=config.learning_rate, betas=config.adam_betas)


def plan_batches(lengths: list[int], batch_size: int, *, seed: int, epoch: int, group_by_length: bool,
                 world_size: int = 1) -> list[list[int]]:
    """Global batches (``batch_size * world_size`` example indices each) for one epoch.

    Shuffled by (seed, epoch). With ``group_by_length`` the shuffled order is cut into chunks of 64
    global batches, each sorted by length, so a batch holds similar lengths and wastes little padding;
    the batches are then shuffled again. Under DDP an incomplete last batch is dropped so that every
    rank gets a slice.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = batch_size * world_size
    if group_by_length:
        chunk = size * 64
        order = [i for start in range(0, len(order), chunk)
                 for i in sorted(order[start:start + chunk], key=lambda i: -lengths[i])]
    batches = [order[start:start + size] for start in range(0, len(order), size)]
    if world_size > 1 and batches and len(batches[-1]) < size:
        batches.pop()
    rng.shuffle(batches)
    return batches


def rank_slice(batch: list[int], rank: int, world_size: int) -> list[int]:
    per = len(batch) // world_size if world_size > 1 else len(batch)
    return batch[rank * per:(rank + 1) * per]


def total_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    if config.max_steps:
        return config.max_steps
    return max(1, math.ceil(config.epochs * batches_per_epoch / config.grad_accum))


@dataclass
class Loop:
    """What a stage hands to ``fit``.

    - ``loss(model, batch) -> (loss tensor, metrics, tokens)``: one micro-batch's mean loss.
    - ``evaluate(model) -> metrics`` with an ``eval/loss`` to select the best model (lower is better),
      or None when there is no held-out data.
    - ``save_model(model)`` writes the servable model into ``out`` (main process only).
    """

    model: torch.nn.Module            # possibly DDP-wrapped
    optimizer: torch.optim.Optimizer
    lengths: list[int]
    collate: Callable[[list[int]], dict[str, torch.Tensor]]
    loss: Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float], int]]
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None
    save_model: Callable[[torch.nn.Module], None]
    group_by_length: bool = True


@dataclass
class FitResult:
    status: str
    steps: int
    tokens: int
    train_seconds: float
    last_train: dict[str, float]
    last_eval: dict[str, float]
    best_step: int | None
    best_eval_loss: float | None


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer, step: int, extra: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "rng": _rng_state(), **extra}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, device: torch.device) -> dict[str, Any]:
    # Our own file (written by save_checkpoint), so full unpickling is safe here.
    state = torch.load(path, map_location=device, weights_only=False)
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    return state


def fit(loop: Loop, config: TrainConfig, rt: Runtime, out: Path, reporter: Reporter,
        should_stop: ShouldStop) -> FitResult:
    batch_size = config.batch_size
    plans: dict[int, list[list[int]]] = {}

    def plan(epoch: int) -> list[list[int]]:
        if epoch not in plans:
            plans.clear()
            plans[epoch] = plan_batches(loop.lengths, batch_size, seed=config.seed, epoch=epoch,
                                        group_by_length=loop.group_by_length, world_size=rt.world_size)
        return plans[epoch]

    per_epoch = len(plan(0))
    if per_epoch == 0:
        raise ValueError(f"not enough training examples for one batch of {batch_size} x {rt.world_size} ranks")
    total = total_steps(config, per_epoch)

    step, best_step, best_loss = 0, None, None
    checkpoint = out / CHECKPOINT
    if config.resume and checkpoint.exists():
        state = load_checkpoint(checkpoint, loop.model, loop.optimizer, rt.device)
        step, best_step, best_loss = state["step"], state.get("best_step"), state.get("best_loss")

    def save_state() -> None:
        if rt.is_main:
            save_checkpoint(checkpoint, loop.model, loop.optimizer, step,
                            {"best_step": best_step, "best_loss": best_loss})
        rt.barrier()

    status, tokens, seconds = "completed", 0, 0.0
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    model = loop.model
    while step < total:
        if rt.any(should_stop()):
            status = "stopped"
            break
        started = time.perf_counter()
        lr = lr_at(step, peak=config.learning_rate, warmup=config.warmup_steps, total=total,
                   min_ratio=config.min_lr_ratio)
        for group in loop.optimizer.param_groups:
            group["lr"] = lr
        model.train()
        sums: dict[str, float] = {}
        step_tokens = 0
        for micro in range(config.grad_accum):
            index = step * config.grad_accum + micro
            epoch, position = divmod(index, per_epoch)
            ids = rank_slice(plan(epoch)[position], rt.rank, rt.world_size)
            batch = {k: v.to(rt.device) for k, v in loop.collate(ids).items()}
            # DDP all-reduces gradients only on the last micro-batch of the step.
            sync = micro == config.grad_accum - 1 or not rt.distributed
            with contextlib.nullcontext() if sync else model.no_sync():
                loss, metrics, n_tokens = loop.loss(model, batch)
                (loss / config.grad_accum).backward()
            step_tokens += n_tokens
            for name, value in {"train/loss": loss.item(), **metrics}.items():
                sums[name] = sums.get(name, 0.0) + value / config.grad_accum
        grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                     if config.max_grad_norm > 0 else torch.tensor(float("nan")))
        loop.optimizer.step()
        loop.optimizer.zero_grad(set_to_none=True)
        step += 1
        seconds += time.perf_counter() - started

        names = sorted(sums)
        reduced = rt.all_sum([sums[n] for n in names] + [float(step_tokens)])
        step_tokens = int(reduced[-1])
        tokens += step_tokens
        last_train = {n: v / rt.world_size for n, v in zip(names, reduced[:-1], strict=True)}
        if step % config.log_every == 0 or step == total:
            reporter.log(step, total, {**last_train, "train/lr": lr, "train/grad_norm": float(grad_norm),
                                       "train/tokens_per_s": tokens / max(seconds, 1e-9)})

        if loop.evaluate is not None and (step == total or (config.eval_every and step % config.eval_every == 0)):
            last_eval = loop.evaluate(model)
            reporter.log(step, total, last_eval)
            if best_loss is None or last_eval["eval/loss"] < best_loss:
                best_step, best_loss = step, last_eval["eval/loss"]
                if rt.is_main:
                    loop.save_model(unwrap(model))
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total:
            save_state()

    save_state()  # resumable after a stop; after completion it lets a longer max_steps continue
    if loop.evaluate is None and rt.is_main and status == "completed":
        loop.save_model(unwrap(model))
    rt.barrier()
    return FitResult(status, step, tokens, seconds, last_train, last_eval, best_step, best_loss)
