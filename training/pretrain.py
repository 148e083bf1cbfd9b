"""Pretraining: next-token loss on plain text, packed into fixed-size blocks.

With ``config.base`` empty this builds the offline base from nothing: a byte-level BPE tokenizer
trained on the training documents and a GPT-2-style model from the config's size fields. Documents
are EOS-separated and packed (standard LM pretraining); held-out documents are chosen by text hash.
"""
from __future__ import annotations

from pathlib import Path

from training.config import PretrainConfig
from training.data import is_held_out
from training.loop import CHECKPOINT, Loop, fit, make_optimizer
from training.models import (
    build_model,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    save_pretrained,
    train_tokenizer,
)
from training.reporting import OnLog, Reporter, ShouldStop, StageResult, never_stop, no_log
from training.runtime import init_runtime, seed_all, unwrap, wrap
from training.sft import collate_lm, lm_eval_loss, lm_step
from training.sources import corpus_texts


def pack(tokenizer, documents: list[str], block_size: int) -> list[tuple[list[int], int]]:
    """Blocks of ``block_size`` tokens from the EOS-joined documents (the remainder is dropped)."""
    stream: list[int] = []
    if not documents:
        return []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + [tokenizer.eos_token_id])
    return [(stream[i:i + block_size], 0) for i in range(0, len(stream) - block_size + 1, block_size)]


def pretrain(config: PretrainConfig, corpus: list[Path], out: Path, *, on_log: OnLog = no_log,
             should_stop: ShouldStop = never_stop) -> StageResult:
    """Train (or continue) a causal LM on the documents in ``corpus`` (see ``sources.corpus_texts``)."""
    out = Path(out)
    rt = init_runtime(config.device)
    seed_all(config.seed)

    documents = [d for d in corpus_texts(corpus) if d.strip()]
    train_docs = [d for d in documents if not is_held_out(d, config.eval_fraction)]
    held_docs = [d for d in documents if is_held_out(d, config.eval_fraction)]
    if config.base:
        tokenizer, model = load_tokenizer(config.base), load_causal_lm(config.base, rt.device)
    else:
        resuming = config.resume and (out / "tokenizer.json").exists() and (out / CHECKPOINT).exists()
        tokenizer = load_tokenizer(out) if resuming else train_tokenizer(train_docs, config.vocab_size)
        model = build_model(tokenizer, config).to(rt.device)
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(out)  # a resumed run must reuse this very tokenizer
    train_rows = pack(tokenizer, train_docs, config.block_size)
    held_rows = pack(tokenizer, held_docs, config.block_size)

    optimizer = make_optimizer(model, config)
    reporter = Reporter(out, "pretrain", config, on_log, main=rt.is_main,
                        append=config.resume and (out / CHECKPOINT).exists())
    pad = tokenizer.pad_token_id
    loop = Loop(
        model=wrap(model, rt), optimizer=optimizer, lengths=[config.block_size] * len(train_rows),
        collate=lambda ids: collate_lm([train_rows[i] for i in ids], pad),
        loss=lm_step,
        evaluate=(lambda m: lm_eval_loss(m, held_rows, pad, config.batch_size * 2, rt)) if held_rows else None,
        save_model=lambda m: save_pretrained(m, tokenizer, out, dtype=config.save_dtype),
        group_by_length=False,
    )
    result = fit(loop, config, rt, out, reporter, should_stop)
    rt.close()
    return reporter.finish(result.status, result.steps, {
        "documents": len(train_docs), "eval_documents": len(held_docs), "train_blocks": len(train_rows),
        "vocab_size": len(tokenizer), "parameters": count_parameters(model), "tokens": result.tokens,
        "train_seconds": round(result.train_seconds, 3),
        "tokens_per_s": result.tokens / max(result.train_seconds, 1e-9),
        "best_step": result.best_step, "best_eval_loss": result.best_eval_loss,
        **result.last_train, **result.last_eval}, model=unwrap(loop.model))
