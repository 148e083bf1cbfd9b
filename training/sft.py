"""Supervised fine-tuning: causal-LM loss on the response tokens only (the prompt is masked).

Examples are right-padded in length-grouped batches; padding is masked out of attention and loss, so
examples never see each other.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from training.config import ConfigError, SFTConfig
from training.data import best_ranked, read_rankings, read_sft, split_by_hash
from training.encoding import encode_pair
from training.loop import CHECKPOINT, Loop, fit, make_optimizer
from training.models import add_lora, count_parameters, load_causal_lm, load_tokenizer, save_pretrained
from training.reporting import OnLog, Reporter, ShouldStop, StageResult, never_stop, no_log
from training.runtime import Runtime, init_runtime, seed_all, unwrap, wrap

IGNORE = -100


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over positions whose label is not IGNORE, and how many there are.
    ``labels`` are aligned with the inputs; the shift happens here."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    n = int((labels != IGNORE).sum())
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    return total / max(n, 1), n


def collate_lm(rows: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` and ``labels`` that ignore each row's first
    ``n_prompt`` tokens and the padding."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(ids)] = 1
        labels[i, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def lm_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, int]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss, _ = masked_lm_loss(logits, batch["labels"])
    return loss, {}, int(batch["attention_mask"].sum())


@torch.no_grad()
def lm_eval_loss(model: torch.nn.Module, rows: list[tuple[list[int], int]], pad_id: int, batch_size: int,
                 rt: Runtime) -> dict[str, float]:
    """Token-weighted mean masked loss over ``rows``, each rank taking every world_size-th row."""
    model = unwrap(model)
    model.eval()
    mine = sorted(rows[rt.rank::rt.world_size], key=lambda r: len(r[0]))
    loss_sum, count = 0.0, 0
    for start in range(0, len(mine), batch_size):
        batch = {k: v.to(rt.device) for k, v in collate_lm(mine[start:start + batch_size], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, n = masked_lm_loss(logits, batch["labels"])
        loss_sum, count = loss_sum + loss.item() * n, count + n
    loss_sum, count = rt.all_sum([loss_sum, float(count)])
    return {"eval/loss": loss_sum / max(count, 1), "eval/tokens": count}


def train_sft(config: SFTConfig, data: Path | None, out: Path, *, eval_data: Path | None = None,
              rankings: Path | None = None, on_log: OnLog = no_log, should_stop: ShouldStop = never_stop
              ) -> StageResult:
    """Fine-tune ``config.base`` on the SFT examples in ``data`` (and, with ``config.best_ranked``, on the
    best response of each ranking in ``rankings``); the best model (by eval loss on ``eval_data``, or on
    the record-hash held-out split) is saved in ``out``. ``data`` may be None when the best-ranked
    responses are all there is to train on (a round that only collected new rankings)."""
    out = Path(out)
    rt = init_runtime(config.device)
    seed_all(config.seed)

    if config.best_ranked and rankings is None:
        raise ConfigError("best_ranked needs the rankings file (--rankings)")
    examples = read_sft(data) if data is not None else []
    ranked = best_ranked(read_rankings(rankings)) if config.best_ranked else []
    examples += ranked
    if not examples:
        raise ConfigError("nothing to train on: no SFT examples and no best-ranked response")
    if eval_data is not None:
        train, held = examples, read_sft(eval_data)
    else:
        train, held = split_by_hash(examples, config.eval_fraction)
    tokenizer = load_tokenizer(config.base)

    def encode(example):
        return encode_pair(tokenizer, example.prompt, example.response, max_length=config.max_length,
                           truncation=config.truncation, chat_template=config.chat_template)

    train_rows, held_rows = [encode(e) for e in train], [encode(e) for e in held]

    model = load_causal_lm(config.base, rt.device)
    if config.lora:
        model = add_lora(model, config)
    optimizer = make_optimizer(model, config)
    reporter = Reporter(out, "sft", config, on_log, main=rt.is_main,
                        append=config.resume and (out / CHECKPOINT).exists())
    pad = tokenizer.pad_token_id
    loop = Loop(
        model=wrap(model, rt), optimizer=optimizer, lengths=[len(ids) for ids, _ in train_rows],
        collate=lambda ids: collate_lm([train_rows[i] for i in ids], pad),
        loss=lm_step,
        evaluate=(lambda m: lm_eval_loss(m, held_rows, pad, config.batch_size * 2, rt)) if held_rows else None,
        save_model=lambda m: save_pretrained(m, tokenizer, out),
        group_by_length=config.group_by_length,
    )
    result = fit(loop, config, rt, out, reporter, should_stop)
    rt.close()
    return reporter.finish(result.status, result.steps, {
        "train_examples": len(train_rows), "eval_examples": len(held_rows), "best_ranked_examples": len(ranked),
        "parameters": count_parameters(model), "trainable_parameters": count_parameters(model, True),
        "tokens": result.tokens, "train_seconds": round(result.train_seconds, 3),
        "tokens_per_s": result.tokens / max(result.train_seconds, 1e-9),
        "best_step": result.best_step, "best_eval_loss": result.best_eval_loss,
        **result.last_train, **result.last_eval}, model=unwrap(loop.model))
