"""Built-in oracles and demonstrators for ``manage.py simulate_labelers`` (demos, tests, load).

An oracle is ``oracle(prompt: str, responses: list[str]) -> list[int]``: a rank per response, 1 = best,
equal ranks are ties. A demonstrator is ``demonstrator(prompt: str) -> str``. Any importable function
with these signatures works (``package.module:function``).
"""
from __future__ import annotations

import re

POLITE = ("please", "thank", "glad", "happy to", "sorry", "certainly", "of course", "help")
# A conversation reaches an oracle rendered as text ("User: …\n\nAssistant: …"), or in HH-RLHF's
# "Human: … Assistant:" form: a demonstrator answers the last turn's words, never its role label.
ROLE_PREFIX = re.compile(r"^\s*(user|human|system|assistant)\s*:\s*", re.IGNORECASE)


def dense_ranks(scores: list[float]) -> list[int]:
    """Ranks from scores (higher is better); equal scores tie: [3, 1, 3] → [1, 2, 1]."""
    distinct = sorted(set(scores), reverse=True)
    return [distinct.index(s) + 1 for s in scores]


def prefer_longer(prompt: str, responses: list[str]) -> list[int]:
    return dense_ranks([len(r.split()) for r in responses])


def prefer_shorter(prompt: str, responses: list[str]) -> list[int]:
    return dense_ranks([-len(r.split()) for r in responses])


def prefer_polite(prompt: str, responses: list[str]) -> list[int]:
    """More polite words first; fewer repeated words breaks ties."""
    def score(text: str) -> float:
        lower = text.lower()
        words = re.findall(r"\w+", lower)
        repetition = (len(words) - len(set(words))) / max(len(words), 1)
        return sum(lower.count(p) for p in POLITE) - repetition
    return dense_ranks([score(r) for r in responses])


def polite_demonstrator(prompt: str) -> str:
    lines = [ROLE_PREFIX.sub("", line).strip() for line in prompt.strip().splitlines()]
    lines = [line for line in lines if line]
    topic = lines[-1][:80].rstrip("?.! ") if lines else ""
    return (f"Thank you for asking. I am glad to help with {topic or 'that'}. "
            "Please tell me more if you need it.")
