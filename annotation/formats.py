"""Readers for public human-feedback formats, turned into the platform's prompt import items.

An import item is what ``POST /api/prompts/bulk/`` and ``manage.py import_prompts`` take:
``{"text" | "messages", "language", "tags", "candidates": [{"text"}, ...]}``.
"""
from __future__ import annotations

import re
from typing import Any

HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of an Anthropic HH-RLHF pair.

    The prompt is the longest common prefix of both dialogues, cut just after the last
    ``"\\n\\nAssistant:"`` inside it (splitting each string on its own last marker is wrong for
    responses that quote the marker themselves).
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind("\n\nAssistant:", 0, n)
    if cut < 0:
        raise ValueError("no shared '\\n\\nAssistant:' turn: not an HH-RLHF pair")
    cut += len("\n\nAssistant:")
    return chosen[:cut], chosen[cut:].removeprefix(" "), rejected[cut:].removeprefix(" ")


def hh_prompt_messages(prompt: str) -> list[dict]:
    """The dialogue before the compared response, as [{role, content}] ending with the user's turn."""
    parts = HH_TURN.split(prompt)
    messages = []
    # parts: ['', 'Human', ' text', 'Assistant', ' text', ..., 'Assistant', '']
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        content = content.strip()
        if content:
            messages.append({"role": HH_ROLES[speaker], "content": content})
    while messages and messages[-1]["role"] != "user":
        messages.pop()
    return messages


def hh_pair_to_item(record: dict[str, Any], *, subset: str) -> dict | None:
    """An import item with the chosen and rejected responses as candidates, or None when unusable
    (identical or empty responses)."""
    prompt, chosen, rejected = split_hh_pair(record["chosen"], record["rejected"])
    chosen, rejected = chosen.strip(), rejected.strip()
    messages = hh_prompt_messages(prompt)
    if not messages or not chosen or not rejected or chosen == rejected:
        return None
    return {
        "messages": messages,
        "language": "en",
        "tags": ["hh-rlhf", subset],
        "candidates": [{"text": chosen}, {"text": rejected}],
    }
