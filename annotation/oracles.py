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


# What the closed-loop benchmark's simulated labelers prefer (bench/closed_loop.sh): something a 135M model
# can learn in two rounds. SmolLM2-135M-Instruct runs past the 64-token budget on about half of the
# prompts, so its answers often stop mid-sentence: the labelers want an answer that finishes, in a
# reasonable number of words.
FINISHED = re.compile(r"[.!?][\"')\]]*$")
CONCISE_WORDS = (12, 40)


def concise_complete_score(prompt: str, response: str) -> float:
    """1 for an answer whose last sentence is finished (it ends with . ! or ?, maybe before a closing
    quote or bracket), minus 0.05 per word outside 12–40 words. An empty answer scores −0.6."""
    text = response.strip()
    words = len(text.split())
    low, high = CONCISE_WORDS
    return (1.0 if FINISHED.search(text) else 0.0) - 0.05 * (max(0, low - words) + max(0, words - high))


def prefer_concise_complete(prompt: str, responses: list[str]) -> list[int]:
    """An oracle: ranks by ``concise_complete_score``, equal scores tie."""
    return dense_ranks([concise_complete_score(prompt, r) for r in responses])


def polite_demonstrator(prompt: str) -> str:
    lines = [ROLE_PREFIX.sub("", line).strip() for line in prompt.strip().splitlines()]
    lines = [line for line in lines if line]
    topic = lines[-1][:80].rstrip("?.! ") if lines else ""
    return (f"Thank you for asking. I am glad to help with {topic or 'that'}. "
            "Please tell me more if you need it.")
