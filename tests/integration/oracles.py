"""A test oracle from outside the product, to show that any importable function works."""
from __future__ import annotations


def longest_first_no_ties(prompt: str, responses: list[str]) -> list[int]:
    order = sorted(range(len(responses)), key=lambda i: (-len(responses[i]), i))
    ranks = [0] * len(responses)
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    return ranks
