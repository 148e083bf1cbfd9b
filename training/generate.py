"""Sampling k candidates per prompt: batched, with the KV cache, reproducible from a seed.

Each sequence draws from its own ``torch.Generator`` seeded from (seed, prompt index, candidate index),
so a candidate does not depend on what else shares its batch. The reported ``mean_logprob`` is the
mean log-probability of the sampled tokens under the model itself (temperature 1, no filtering) — the
policy's own log-prob, not the sampling distribution's.
"""
from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import TypedDict

import torch
import torch.nn.functional as F

from training.config import ConfigError, GenerateConfig
from training.data import VERSION, Prompt, read_ppo_prompts, write_jsonl
from training.encoding import encode_prompt, fit_prompt
from training.models import context_length, load_causal_lm, load_tokenizer
from training.reporting import OnLog, Reporter, ShouldStop, StageResult, never_stop, no_log
from training.runtime import init_runtime

CANDIDATES_FILE = "candidates.jsonl"


class Candidate(TypedDict):
    text: str
    token_ids: list[int]   # exactly what was sampled (PPO needs the ids, not a re-tokenisation)
    tokens: int            # generated tokens, EOS included when finish_reason is "eos"
    mean_logprob: float
    finish_reason: str     # "eos", "stop" or "length"


def sequence_seed(seed: int, prompt_index: int, candidate: int) -> int:
    return (seed * 1_000_003 + prompt_index) * 1_009 + candidate


def process_logits(logits: torch.Tensor, seen: torch.Tensor, config: GenerateConfig) -> torch.Tensor:
    """Repetition penalty (CTRL: divide positive / multiply negative logits of seen tokens), then
    temperature, top-k and top-p (nucleus) filtering. ``seen`` is a (B, V) bool mask."""
    if config.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / config.repetition_penalty, logits * config.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if config.temperature > 0:
        logits = logits / config.temperature
    if config.top_k > 0 and config.top_k < logits.size(-1):
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > config.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _cache_keyword(model: torch.nn.Module) -> str:
    # transformers 5.x renamed the forward argument past_key_values to cache.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def _decode(model, tokenizer, prompts: list[list[int]], seeds: list[int], config: GenerateConfig) -> list[Candidate]:
    device = next(model.parameters()).device
    batch, width = len(prompts), max(map(len, prompts))
    pad = tokenizer.pad_token_id
    input_ids = torch.full((batch, width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((batch, width), dtype=torch.long, device=device)
    for i, ids in enumerate(prompts):  # left padding: every row's next token lands in the last column
        input_ids[i, width - len(ids):] = torch.tensor(ids, device=device)
        mask[i, width - len(ids):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    vocab = model.get_output_embeddings().weight.size(0)
    seen = torch.zeros((batch, vocab), dtype=torch.bool, device=device)
    seen.scatter_(1, input_ids, mask.bool())
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    tokens: list[list[int]] = [[] for _ in range(batch)]
    logprobs: list[list[float]] = [[] for _ in range(batch)]
    finish: list[str | None] = [None] * batch
    texts: list[str | None] = [None] * batch
    cache_kw, cache, current = _cache_keyword(model), None, input_ids

    for _ in range(config.max_new_tokens):
        out = model(input_ids=current, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_kw: cache})
        cache = out[cache_kw] if cache_kw in out else out.past_key_values
        logits = out.logits[:, -1].float()
        model_logprobs = logits.log_softmax(dim=-1)
        scores = process_logits(logits, seen, config)
        if config.temperature == 0:
            chosen = scores.argmax(dim=-1)
        else:
            probs = F.softmax(scores, dim=-1)
            chosen = torch.cat([torch.multinomial(probs[i], 1, generator=generators[i]) for i in range(batch)])
        for i in range(batch):
            if finish[i] is not None:
                continue
            token = int(chosen[i])
            tokens[i].append(token)
            logprobs[i].append(float(model_logprobs[i, token]))
            if token == tokenizer.eos_token_id:
                finish[i] = "eos"
            elif config.stop:
                text = tokenizer.decode(tokens[i], skip_special_tokens=True)
                cuts = [text.find(s) for s in config.stop if s in text]
                if cuts:
                    finish[i], texts[i] = "stop", text[:min(cuts)]
        if all(f is not None for f in finish):
            break
        seen[torch.arange(batch, device=device), chosen] = True
        current = chosen[:, None]
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        positions = positions[:, -1:] + 1

    results: list[Candidate] = []
    for i in range(batch):
        text = texts[i] if texts[i] is not None else tokenizer.decode(tokens[i], skip_special_tokens=True)
        results.append({"text": text, "token_ids": tokens[i], "tokens": len(tokens[i]),
                        "mean_logprob": sum(logprobs[i]) / max(len(logprobs[i]), 1),
                        "finish_reason": finish[i] or "length"})
    return results


def generate(model: torch.nn.Module, tokenizer, prompts: list[Prompt], config: GenerateConfig,
             on_batch=None, should_stop=never_stop) -> list[list[Candidate]]:
    """``config.k`` candidates for each prompt (prompt order kept). A prompt that leaves fewer than
    ``max_new_tokens`` of the model's context is cut from the left, or rejected when
    ``truncation == "error"`` (``PromptTooLong`` naming the prompt). Stops early, with the candidates
    done so far, when ``should_stop()`` is true between batches."""
    model.eval()
    budget = context_length(model) - config.max_new_tokens
    if budget < 1:
        raise ConfigError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt in the "
                          f"model's {context_length(model)}-token context")
    encoded = [fit_prompt(encode_prompt(tokenizer, p, chat_template=config.chat_template), budget,
                          config.truncation, what=f"prompt {i}") for i, p in enumerate(prompts)]
    jobs = [(i, c) for i in range(len(prompts)) for c in range(config.k)]
    results: list[list[Candidate]] = [[] for _ in prompts]
    for start in range(0, len(jobs), config.batch_size):
        if should_stop():
            break
        chunk = jobs[start:start + config.batch_size]
        decoded = _decode(model, tokenizer, [encoded[i] for i, _ in chunk],
                          [sequence_seed(config.seed, i, c) for i, c in chunk], config)
        for (i, _), candidate in zip(chunk, decoded, strict=True):
            results[i].append(candidate)
        if on_batch is not None:
            on_batch(min(start + config.batch_size, len(jobs)), len(jobs), decoded)
    return results


def generate_candidates(config: GenerateConfig, prompts: Path, out: Path, *, on_log: OnLog = no_log,
                        should_stop: ShouldStop = never_stop) -> StageResult:
    """Sample candidates for the PPO-prompt file ``prompts`` into ``out/candidates.jsonl``."""
    out = Path(out)
    rt = init_runtime(config.device)
    torch.manual_seed(config.seed)
    records = read_ppo_prompts(prompts)
    tokenizer = load_tokenizer(config.model)
    model = load_causal_lm(config.model, rt.device)
    reporter = Reporter(out, "generate", config, on_log, main=rt.is_main)
    started, produced = time.perf_counter(), 0

    def on_batch(done: int, total: int, decoded: list[Candidate]) -> None:
        nonlocal produced
        produced += sum(c["tokens"] for c in decoded)
        reporter.log(done, total, {"generate/tokens_per_s": produced / (time.perf_counter() - started)})

    results = generate(model, tokenizer, [r.prompt for r in records], config, on_batch, should_stop)
    seconds = time.perf_counter() - started
    complete = [(r, c) for r, c in zip(records, results, strict=True) if len(c) == config.k]
    write_jsonl(out / CANDIDATES_FILE, ({"version": VERSION, "prompt_id": r.id if r.id is not None else str(i),
                                         "prompt": r.prompt, "candidates": c}
                                        for i, (r, c) in enumerate(complete)))
    reasons: dict[str, int] = {}
    for _, candidates in complete:
        for c in candidates:
            reasons[c["finish_reason"]] = reasons.get(c["finish_reason"], 0) + 1
    status = "completed" if len(complete) == len(records) else "stopped"
    return reporter.finish(status, len(complete), {
        "prompts": len(records), "prompts_done": len(complete), "candidates": len(complete) * config.k,
        "generated_tokens": produced, "seconds_generating": round(seconds, 3),
        "tokens_per_s": produced / max(seconds, 1e-9), "finish_reasons": reasons})
