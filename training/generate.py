"""Sampling k candidates per prompt: batched, with the KV cache, reproducible from a seed.

Each sequence draws from its own ``torch.Generator`` seeded from (seed, prompt index, candidate index),
so a candidate does not depend on what else shares its batch. The reported ``mean_logprob`` is the
mean log-probability of the sampled tokens under the model itself (temperature 1, no filtering) — the
policy's own log-prob, not the sampling distribution's.

The work is cut into chunks of ``batch_size`` (prompt, candidate) jobs. Since a chunk's output depends
only on the config, the prompts and the model, the stage appends each finished chunk to a checkpoint
file and a rerun of the same three skips the chunks already there: an interrupted job resumes and
writes exactly the candidates.jsonl an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypedDict

import torch
import torch.nn.functional as F

from training.config import ConfigError, GenerateConfig
from training.data import VERSION, PPOPrompt, Prompt, read_ppo_prompts, to_record, write_jsonl
from training.encoding import encode_prompt, fit_prompt
from training.models import cache_keyword, context_length, keeps_logits, load_causal_lm, load_tokenizer, returned_cache
from training.reporting import OnLog, Reporter, ShouldStop, StageResult, never_stop, no_log, write_json
from training.runtime import init_runtime

CANDIDATES_FILE = "candidates.jsonl"
STATE_FILE = Path("checkpoints") / "generate-state.json"       # fingerprint of what the chunks belong to
PARTIAL_FILE = Path("checkpoints") / "generate-partial.jsonl"  # one line per finished chunk


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


# Where the plain format (training.data.render_plain) starts another turn: a response that writes one is
# inventing the next speaker's words, which labelers would otherwise have to rank.
PLAIN_TURN_MARKERS = ("\nHuman:", "\nAssistant:", "\nSystem:", "\nUser:")


@dataclass(frozen=True)
class StopRules:
    """Where a response ends: at a token of ``token_ids`` (EOS first of all), or before the first of
    ``texts`` in the decoded text."""

    token_ids: frozenset[int]
    texts: tuple[str, ...]


def stop_rules(tokenizer, config: GenerateConfig) -> StopRules:
    """EOS and the config's ``stop`` strings; with ``stop_at_turn_end``, also where the prompt format would
    start another turn: the plain format's role markers, or the chat template's turn boundary (its
    special tokens, such as ChatML's <|im_end|> and <|im_start|>, and the text between two turns)."""
    ids, texts = {tokenizer.eos_token_id}, list(config.stop)
    if config.stop_at_turn_end and config.chat_template:
        turn_ids, separator = template_turn_boundary(tokenizer)
        ids |= turn_ids
        texts += [separator] if separator else []
    elif config.stop_at_turn_end:
        texts += PLAIN_TURN_MARKERS
    return StopRules(frozenset(i for i in ids if i is not None), tuple(dict.fromkeys(texts)))


def template_turn_boundary(tokenizer) -> tuple[set[int], str]:
    """The chat template's turn boundary, read off a rendered three-turn conversation: the special tokens
    it uses, and the text between the assistant's words and the next user's (stripped)."""
    turns = [{"role": "user", "content": "AAAA"}, {"role": "assistant", "content": "BBBB"},
             {"role": "user", "content": "CCCC"}]
    text = tokenizer.apply_chat_template(turns, tokenize=False)
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    ids = {i for i in tokenizer(text, add_special_tokens=False)["input_ids"] if i in special}
    separator = text[text.index("BBBB") + 4:text.index("CCCC")] if "BBBB" in text and "CCCC" in text else ""
    return ids, separator.strip()


def cut_at_stop(text: str, texts: tuple[str, ...]) -> str | None:
    """``text`` before the first stop string in it, or None when there is none."""
    cuts = [text.find(s) for s in texts if s in text]
    return text[:min(cuts)] if cuts else None


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
    rules = stop_rules(tokenizer, config)
    # A stop string is looked for in the last few tokens' text only (decoding everything at every step
    # would cost O(n²)); a token is at least one character, so this window holds any new match.
    window = max((len(t) for t in rules.texts), default=0) + 2
    tokens: list[list[int]] = [[] for _ in range(batch)]
    logprobs: list[list[float]] = [[] for _ in range(batch)]
    finish: list[str | None] = [None] * batch
    texts: list[str | None] = [None] * batch
    cache_kw, cache, current = cache_keyword(model) or "past_key_values", None, input_ids
    last_only = {"logits_to_keep": 1} if keeps_logits(model) else {}  # the prompt's positions need no logits

    for _ in range(config.max_new_tokens):
        out = model(input_ids=current, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_kw: cache}, **last_only)
        cache = returned_cache(out, cache_kw)
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
            elif token in rules.token_ids:
                finish[i] = "stop"
            elif rules.texts and cut_at_stop(tokenizer.decode(tokens[i][-window:], skip_special_tokens=True),
                                             rules.texts) is not None:
                finish[i] = "stop"
                texts[i] = cut_at_stop(tokenizer.decode(tokens[i], skip_special_tokens=True), rules.texts)
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
             on_batch=None, should_stop=never_stop, done: dict[int, list[Candidate]] | None = None,
             ) -> list[list[Candidate]]:
    """``config.k`` candidates for each prompt (prompt order kept). A prompt that leaves fewer than
    ``max_new_tokens`` of the model's context is cut from the left, or rejected when
    ``truncation == "error"`` (``PromptTooLong`` naming the prompt). Stops early, with the candidates
    done so far, when ``should_stop()`` is true before a chunk is decoded.

    The jobs (prompt, candidate) are decoded in chunks of ``batch_size``; ``done`` maps the start index of
    chunks already decoded (by an earlier run) to their candidates, which are used instead of decoding.
    ``on_batch(jobs_done, jobs_total, decoded, start)`` follows each decoded chunk; ``jobs_done`` counts
    the ``done`` chunks too."""
    model.eval()
    budget = context_length(model) - config.max_new_tokens
    if budget < 1:
        raise ConfigError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt in the "
                          f"model's {context_length(model)}-token context")
    encoded = [fit_prompt(encode_prompt(tokenizer, p, chat_template=config.chat_template), budget,
                          config.truncation, what=f"prompt {i}") for i, p in enumerate(prompts)]
    jobs = [(i, c) for i in range(len(prompts)) for c in range(config.k)]  # job j is prompt j // k
    done = done or {}
    results: list[list[Candidate]] = [[] for _ in prompts]
    finished = sum(len(chunk) for chunk in done.values())
    for start in range(0, len(jobs), config.batch_size):
        chunk = jobs[start:start + config.batch_size]
        decoded = done.get(start)
        if decoded is None:
            if should_stop():
                break
            decoded = _decode(model, tokenizer, [encoded[i] for i, _ in chunk],
                              [sequence_seed(config.seed, i, c) for i, c in chunk], config)
            finished += len(chunk)
            if on_batch is not None:
                on_batch(finished, len(jobs), decoded, start)
        for (i, _), candidate in zip(chunk, decoded, strict=True):
            results[i].append(candidate)
    return results


# --- the checkpoint: a fingerprint, then one appended line per finished chunk ---

def fingerprint(config: GenerateConfig, records: list[PPOPrompt]) -> str:
    """sha256 of everything a chunk's output depends on: the config (less ``resume`` and ``device``), the
    prompt records and, for a local model directory, its files' names, sizes and mtimes — so a model
    retrained in place is not resumed with the old model's candidates."""
    settings = {k: v for k, v in config.to_dict().items() if k not in ("resume", "device")}
    model = Path(config.model)
    stats = [(f.name, f.stat()) for f in sorted(model.iterdir()) if f.is_file()] if model.is_dir() else []
    payload = {"config": settings, "prompts": [to_record(r) for r in records],
               "model_files": [(name, st.st_size, st.st_mtime_ns) for name, st in stats]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def stored_fingerprint(out: Path) -> str | None:
    try:
        return json.loads((out / STATE_FILE).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_chunks(out: Path, config: GenerateConfig, n_prompts: int) -> dict[int, list[Candidate]]:
    """The finished chunks in the partial file (start index → candidates). A line that is not a whole
    chunk of this job list (the torn last line of a killed run) is skipped. The caller checks the
    fingerprint first: the file itself does not say which config it belongs to."""
    try:
        lines = (out / PARTIAL_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    n_jobs, chunks = n_prompts * config.k, {}
    for line in lines:
        try:
            row = json.loads(line)
            start, pairs = row["start"], row["candidates"]
            expected = [j // config.k for j in range(start, min(start + config.batch_size, n_jobs))]
            if start >= 0 and start % config.batch_size == 0 and expected and [i for i, _ in pairs] == expected:
                chunks[start] = [candidate for _, candidate in pairs]
        except (ValueError, KeyError, TypeError):
            continue
    return chunks


def open_checkpoint(out: Path, stamp: str, chunks: dict[int, list[Candidate]], k: int) -> IO[str]:
    """Rewrites the partial file with ``chunks`` only (dropping a torn line and any other run's chunks),
    then records ``stamp``, and returns the partial file open for appending. The partial file is
    replaced first, so a kill in between never pairs the new fingerprint with another run's chunks."""
    (out / PARTIAL_FILE).parent.mkdir(parents=True, exist_ok=True)
    tmp = (out / PARTIAL_FILE).with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for start in sorted(chunks):
            f.write(_chunk_line(start, k, chunks[start]))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / PARTIAL_FILE)
    write_json(out / STATE_FILE, {"fingerprint": stamp})
    return open(out / PARTIAL_FILE, "a", encoding="utf-8")


def append_chunk(file: IO[str], start: int, k: int, decoded: list[Candidate]) -> None:
    """Appends one finished chunk and fsyncs it: a kill loses at most the chunk being decoded."""
    file.write(_chunk_line(start, k, decoded))
    file.flush()
    os.fsync(file.fileno())


def _chunk_line(start: int, k: int, decoded: list[Candidate]) -> str:
    """``{"start": s, "candidates": [[prompt index, candidate], ...]}``: job j is prompt j // k."""
    pairs: list[list[Any]] = [[(start + n) // k, c] for n, c in enumerate(decoded)]
    return json.dumps({"start": start, "candidates": pairs}, ensure_ascii=False) + "\n"


def generate_candidates(config: GenerateConfig, prompts: Path, out: Path, *, on_log: OnLog = no_log,
                        should_stop: ShouldStop = never_stop) -> StageResult:
    """Sample candidates for the PPO-prompt file ``prompts`` into ``out/candidates.jsonl``.

    Each finished chunk is appended (fsynced) to ``out/checkpoints/generate-partial.jsonl`` under the
    fingerprint in ``generate-state.json``. With ``config.resume`` and a matching fingerprint (same
    config less resume/device, same prompts, same model files), those chunks are reused, not decoded
    again, so a stopped or killed run resumes and ends with the same candidates.jsonl as an uninterrupted
    one; otherwise the stage starts over. The checkpoint files stay after completion (about the size of
    candidates.jsonl), so rerunning a finished stage decodes nothing. The summary's ``resumed_chunks``
    counts reused chunks and ``stale_checkpoint`` says a checkpoint of another run was discarded."""
    out = Path(out)
    rt = init_runtime(config.device)
    torch.manual_seed(config.seed)
    records = read_ppo_prompts(prompts)
    # Only the main process keeps a checkpoint: the others would write the same file at once.
    stamp, previous = fingerprint(config, records), stored_fingerprint(out) if rt.is_main else None
    resumed = read_chunks(out, config, len(records)) if config.resume and previous == stamp else {}
    stale = config.resume and previous not in (None, stamp)
    tokenizer = load_tokenizer(config.model)
    model = load_causal_lm(config.model, rt.device)
    reporter = Reporter(out, "generate", config, on_log, main=rt.is_main, append=bool(resumed))
    partial = open_checkpoint(out, stamp, resumed, config.k) if rt.is_main else None
    started, produced = time.perf_counter(), 0

    def on_batch(done: int, total: int, decoded: list[Candidate], start: int) -> None:
        nonlocal produced
        if partial is not None:
            append_chunk(partial, start, config.k, decoded)
        produced += sum(c["tokens"] for c in decoded)
        reporter.log(done, total, {"generate/tokens_per_s": produced / (time.perf_counter() - started)})

    try:
        results = generate(model, tokenizer, [r.prompt for r in records], config, on_batch, should_stop, resumed)
    finally:
        if partial is not None:
            partial.close()
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
        "tokens_per_s": produced / max(seconds, 1e-9), "finish_reasons": reasons,
        "resumed_chunks": len(resumed), "stale_checkpoint": stale})
