"""Versioned JSON Lines data contracts and their validating readers (no torch).

Every line is one JSON object with ``"version": 1``. A prompt is either a string or a list of
messages ``[{"role": "system"|"user"|"assistant", "content": str}, ...]`` ending with a user turn.

- SFT example:     {"version": 1, "prompt": P, "response": str, "id"?: str}
- Ranking example: {"version": 1, "prompt": P, "responses": [str * k], "ranks": [int * k],
                    "weight"?: float > 0, "id"?: str}
                   k >= 2; rank 1 is best, equal ranks are ties, ranks are dense (1, 1, 2 — not 1, 1, 3),
                   and at least two ranks differ.
- PPO prompt:      {"version": 1, "prompt": P, "id"?: str}

Readers check every line and raise one ``DataError`` listing each bad line by number; nothing is
silently dropped. Files may be gzip-compressed (``.gz``).
"""
from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

VERSION = 1
ROLES = ("system", "user", "assistant")
MAX_REPORTED_ERRORS = 20


class Message(TypedDict):
    role: str
    content: str


Prompt = str | list[Message]


class DataError(ValueError):
    """One or more lines of a data file break its contract. ``errors`` holds (line number, message)."""

    def __init__(self, path: str | Path, errors: list[tuple[int, str]], total: int | None = None):
        self.path, self.errors = str(path), errors
        total = total if total is not None else len(errors)
        shown = "\n".join(f"  {self.path}:{line}: {message}" for line, message in errors)
        more = f"\n  … and {total - len(errors)} more" if total > len(errors) else ""
        super().__init__(f"{total} bad line(s) in {self.path}:\n{shown}{more}")


@dataclass(frozen=True)
class SFTExample:
    prompt: Prompt
    response: str
    id: str | None = None


@dataclass(frozen=True)
class RankingExample:
    prompt: Prompt
    responses: list[str]
    ranks: list[int]
    weight: float = 1.0
    id: str | None = None

    @property
    def k(self) -> int:
        return len(self.responses)

    def best_response(self) -> str:
        return self.responses[self.ranks.index(1)]


@dataclass(frozen=True)
class PPOPrompt:
    prompt: Prompt
    id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


# --- validation of one record; each returns the typed example or raises ValueError(message) ---

def _check_prompt(value: Any) -> Prompt:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("prompt is empty")
        return value
    if not isinstance(value, list) or not value:
        raise ValueError("prompt must be a non-empty string or a non-empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(f"prompt[{i}] must be an object with exactly 'role' and 'content'")
        if message["role"] not in ROLES:
            raise ValueError(f"prompt[{i}].role must be one of {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise ValueError(f"prompt[{i}].content must be a string")
    if value[-1]["role"] != "user":
        raise ValueError("the last prompt message must have role 'user'")
    return value


def _check_common(record: Any, allowed: set[str]) -> None:
    if not isinstance(record, dict):
        raise ValueError("line is not a JSON object")
    if record.get("version") != VERSION:
        raise ValueError(f"version must be {VERSION} (got {record.get('version')!r})")
    unknown = sorted(set(record) - allowed - {"version", "id", "metadata"})
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    if "id" in record and not isinstance(record["id"], str):
        raise ValueError("id must be a string")


def parse_sft(record: Any) -> SFTExample:
    _check_common(record, {"prompt", "response"})
    prompt = _check_prompt(record.get("prompt"))
    response = record.get("response")
    if not isinstance(response, str) or not response.strip():
        raise ValueError("response must be a non-empty string")
    return SFTExample(prompt, response, record.get("id"))


def check_ranks(ranks: Any, k: int) -> list[int]:
    """Ranks of k responses: ints, 1 = best, ties equal, dense from 1, not all tied."""
    if not isinstance(ranks, list) or len(ranks) != k:
        raise ValueError(f"ranks must be a list of {k} integers, one per response")
    if not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
        raise ValueError("ranks must be integers")
    if sorted(set(ranks)) != list(range(1, max(ranks) + 1)) or min(ranks) != 1:
        raise ValueError(f"ranks must be dense from 1 (1 = best, ties share a rank), got {ranks}")
    if len(set(ranks)) < 2:
        raise ValueError("all responses are tied: the example has no comparison")
    return ranks


def parse_ranking(record: Any) -> RankingExample:
    _check_common(record, {"prompt", "responses", "ranks", "weight"})
    prompt = _check_prompt(record.get("prompt"))
    responses = record.get("responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise ValueError("responses must be a list of at least 2 strings")
    if not all(isinstance(r, str) and r.strip() for r in responses):
        raise ValueError("every response must be a non-empty string")
    ranks = check_ranks(record.get("ranks"), len(responses))
    weight = record.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise ValueError("weight must be a number > 0")
    return RankingExample(prompt, responses, ranks, float(weight), record.get("id"))


def parse_ppo_prompt(record: Any) -> PPOPrompt:
    _check_common(record, {"prompt"})
    return PPOPrompt(_check_prompt(record.get("prompt")), record.get("id"), record.get("metadata") or {})


# --- reading and writing files ---

def open_text(path: str | Path, mode: str = "rt"):
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line; a line that is not JSON yields its error."""
    with open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})")


def _read(path: str | Path, parse) -> list:
    records, errors, total = [], [], 0
    for number, record in iter_jsonl(path):
        try:
            if isinstance(record, ValueError):
                raise record
            records.append(parse(record))
        except ValueError as exc:
            total += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append((number, str(exc)))
    if total:
        raise DataError(path, errors, total)
    if not records:
        raise DataError(path, [(0, "the file holds no records")])
    return records


def read_sft(path: str | Path) -> list[SFTExample]:
    return _read(path, parse_sft)


def read_rankings(path: str | Path) -> list[RankingExample]:
    return _read(path, parse_ranking)


def read_ppo_prompts(path: str | Path) -> list[PPOPrompt]:
    return _read(path, parse_ppo_prompt)


def best_ranked(rankings: Iterable[RankingExample]) -> list[SFTExample]:
    """Each ranking's best response as a demonstration, where the ranking has one: a single non-empty
    response at rank 1 that beat at least one other (all-tied rankings say nothing). This is rejection-
    sampling fine-tuning (Llama 2, Touvron et al. 2023): fine-tuning on the best of the policy's own
    candidates carries what the labelers preferred into the next round's SFT model."""
    examples = []
    for r in rankings:
        if r.ranks.count(1) == 1 and max(r.ranks) > 1 and r.best_response().strip():
            examples.append(SFTExample(prompt=r.prompt, response=r.best_response(),
                                       id=f"{r.id}:best" if r.id else None))
    return examples


def to_record(example: SFTExample | RankingExample | PPOPrompt) -> dict[str, Any]:
    """The contract's JSON object for a typed example (what the platform's export writes)."""
    record: dict[str, Any] = {"version": VERSION, "prompt": example.prompt}
    if isinstance(example, SFTExample):
        record["response"] = example.response
    elif isinstance(example, RankingExample):
        record.update(responses=example.responses, ranks=example.ranks)
        if example.weight != 1.0:
            record["weight"] = example.weight
    if example.id is not None:
        record["id"] = example.id
    return record


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    count = 0
    with open_text(path, "wt") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


# --- the fixed train/held-out split ---

def record_hash(prompt: Prompt) -> str:
    """sha256 of the prompt's canonical JSON. Records sharing a prompt land on the same side."""
    canonical = json.dumps(prompt, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_held_out(prompt: Prompt, fraction: float) -> bool:
    """True for about ``fraction`` of prompts, fixed forever: the first 8 hex digits of the record hash,
    as an integer, modulo 10,000, below fraction * 10,000."""
    return int(record_hash(prompt)[:8], 16) % 10_000 < round(fraction * 10_000)


def split_by_hash(examples: list, fraction: float) -> tuple[list, list]:
    """(train, held-out) by ``is_held_out`` on each example's prompt."""
    train, held = [], []
    for example in examples:
        (held if is_held_out(example.prompt, fraction) else train).append(example)
    return train, held


# --- the plain prompt format (no chat template) ---

PLAIN_ROLES = {"system": "System", "user": "Human", "assistant": "Assistant"}


def render_plain(prompt: Prompt) -> str:
    """The plain format, HH-RLHF style: "\\n\\nHuman: …\\n\\nAssistant:" turns, ending with the
    "\\n\\nAssistant:" cue. A string prompt is used as it is. The response follows after one space and
    ends with EOS."""
    if isinstance(prompt, str):
        return prompt
    turns = "".join(f"\n\n{PLAIN_ROLES[m['role']]}: {m['content'].strip()}" for m in prompt)
    return turns + "\n\nAssistant:"


def prompt_messages(prompt: Prompt) -> list[Message]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def train_and_held_rankings(data: str | Path, eval_data: str | Path | None, eval_fraction: float
                            ) -> tuple[list[RankingExample], list[RankingExample]]:
    """(training, held-out) rankings: ``eval_data`` when given, else the record-hash split of ``data``."""
    examples = read_rankings(data)
    if eval_data is not None:
        return examples, read_rankings(eval_data)
    return split_by_hash(examples, eval_fraction)
