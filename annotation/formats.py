"""Readers for public human-feedback formats, turned into the platform's prompt import items.

An import item is what ``POST /api/prompts/bulk/`` and ``manage.py import_prompts`` take:
``{"text" | "messages", "language", "tags", "candidates": [{"text"}, ...]}``. The format parsing itself
lives in the training library (``training.sources``, pure Python), so both sides read HH-RLHF alike.
"""
from __future__ import annotations

from typing import Any

from training.sources import hh_messages, split_hh_pair

__all__ = ["hh_pair_to_item", "split_hh_pair"]

FORMATS = ("items", "hh-rlhf")  # what an import file may hold: the platform's items, or HH-RLHF pairs


def hh_pair_to_item(record: dict[str, Any], *, subset: str) -> dict | None:
    """An import item with the chosen and rejected responses as candidates, or None when unusable
    (identical or empty responses)."""
    prompt, chosen, rejected = split_hh_pair(record["chosen"], record["rejected"])
    messages = hh_messages(prompt)
    if not messages or not chosen or not rejected or chosen == rejected:
        return None
    return {
        "messages": messages,
        "language": "en",
        "tags": ["hh-rlhf", subset],
        "candidates": [{"text": chosen}, {"text": rejected}],
    }
