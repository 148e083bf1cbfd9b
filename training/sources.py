"""Converters from public human-feedback formats to the contracts in ``training.data`` (no torch).

- Anthropic HH-RLHF pairs (``{"chosen", "rejected"}`` whole dialogues) → k=2 ranking examples, and the
  chosen responses → SFT examples.
- OpenAssistant tree exports → k-way ranking examples (each group of ranked sibling replies, k up to 9)
  and SFT examples (human-written assistant replies).

Converters skip records that cannot form an example (identical or empty responses) and count them in
the returned ``skipped`` dict, so the caller can report it: nothing disappears without a number.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.data import Message, RankingExample, SFTExample, iter_jsonl, open_text

HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
ASSISTANT_CUE = "\n\nAssistant:"


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response). The prompt is the longest common prefix cut just
    after its last "\\n\\nAssistant:"; splitting each string on its own last marker is wrong for the
    responses that quote the marker themselves."""
    n, limit = 0, min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(ASSISTANT_CUE, 0, n)
    if cut < 0:
        raise ValueError("no shared '\\n\\nAssistant:' turn: not an HH-RLHF pair")
    cut += len(ASSISTANT_CUE)
    return chosen[:cut], chosen[cut:].strip(), rejected[cut:].strip()


def hh_messages(prompt: str) -> list[Message]:
    """The dialogue before the compared response as messages ending with the user's turn."""
    parts = HH_TURN.split(prompt)
    messages: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        if content.strip():
            messages.append({"role": HH_ROLES[speaker], "content": content.strip()})
    while messages and messages[-1]["role"] != "user":
        messages.pop()
    return messages


def hh_rankings(path: str | Path, skipped: Counter | None = None) -> Iterator[RankingExample]:
    """k=2 ranking examples (chosen rank 1, rejected rank 2) from an HH-RLHF ``.jsonl(.gz)`` file."""
    skipped = skipped if skipped is not None else Counter()
    subset = Path(path).parent.name
    for number, record in iter_jsonl(path):
        if isinstance(record, ValueError):
            raise ValueError(f"{path}:{number}: {record}")
        prompt, chosen, rejected = split_hh_pair(record["chosen"], record["rejected"])
        messages = hh_messages(prompt)
        if not messages:
            skipped["no user turn"] += 1
        elif not chosen or not rejected:
            skipped["empty response"] += 1
        elif chosen == rejected:
            skipped["identical responses"] += 1
        else:
            yield RankingExample(messages, [chosen, rejected], [1, 2], id=f"{subset}:{number}")


def oasst_trees(path: str | Path) -> Iterator[dict[str, Any]]:
    with open_text(path) as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _walk(message: dict[str, Any], history: list[Message]) -> Iterator[tuple[list[Message], dict[str, Any]]]:
    """(conversation before message's replies, message) for every message of a tree."""
    role = "user" if message["role"] == "prompter" else "assistant"
    here = history + [{"role": role, "content": message["text"]}]
    yield here, message
    for reply in message.get("replies", []):
        yield from _walk(reply, here)


def oasst_rankings(path: str | Path, skipped: Counter | None = None, *, human_only: bool = False
                   ) -> Iterator[RankingExample]:
    """One example per group of ranked assistant siblings. OA ``rank`` 0 is best; replies without a
    rank are left out of their group. ``human_only`` drops synthetic replies."""
    skipped = skipped if skipped is not None else Counter()
    for tree in oasst_trees(path):
        for history, message in _walk(tree["prompt"], []):
            if message["role"] != "prompter":
                continue
            ranked = [r for r in message.get("replies", [])
                      if r["role"] == "assistant" and r.get("rank") is not None and not r.get("deleted")
                      and not (human_only and r.get("synthetic"))]
            if len(ranked) < 2:
                continue
            dense = {rank: i + 1 for i, rank in enumerate(sorted({r["rank"] for r in ranked}))}
            ranks = [dense[r["rank"]] for r in ranked]
            if len(set(ranks)) < 2:
                skipped["all tied"] += 1
                continue
            yield RankingExample(history, [r["text"] for r in ranked], ranks, id=message["message_id"])


def oasst_demonstrations(path: str | Path, *, human_only: bool = True) -> Iterator[SFTExample]:
    """Every assistant reply (human-written by default) as a demonstration of its conversation."""
    for tree in oasst_trees(path):
        for history, message in _walk(tree["prompt"], []):
            if message["role"] == "assistant" and not message.get("deleted") and message["text"].strip():
                if human_only and message.get("synthetic"):
                    continue
                yield SFTExample(history[:-1], message["text"].strip(), id=message["message_id"])


def corpus_texts(paths: list[str | Path]) -> Iterator[str]:
    """Pretraining documents: a ``.txt``/``.md`` file is one document; a ``.jsonl(.gz)`` file holds one
    ``{"text": str}`` per line (``convert`` writes these from HH-RLHF and OpenAssistant)."""
    for path in map(Path, paths):
        if path.suffix in (".txt", ".md"):
            yield path.read_text(encoding="utf-8")
            continue
        for number, record in iter_jsonl(path):
            if isinstance(record, ValueError) or not isinstance(record, dict) or \
                    not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{number}: a corpus line must be {{\"text\": str}}")
            yield record["text"]
