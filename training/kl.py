"""β, the coefficient of PPO's per-token KL penalty: fixed, or Ziegler et al.'s adaptive controller.

Plain Python (no torch): under DDP the mean over ranks comes in as a function, ``Runtime.all_sum``.
"""
from __future__ import annotations

from collections.abc import Callable

AllSum = Callable[[list[float]], list[float]]
"""Element-wise sum over ranks (the identity in one process)."""


class KLController:
    """β for the KL penalty: fixed, or Ziegler et al.'s adaptive proportional controller
    β ← β (1 + clip(KL/target − 1, −0.2, 0.2) · n / horizon) after each rollout of n sequences."""

    def __init__(self, init: float, adaptive: bool = False, target: float = 6.0, horizon: int = 10000):
        self.value, self.adaptive, self.target, self.horizon = init, adaptive, target, horizon

    def update(self, kl: float, n_sequences: int) -> None:
        if self.adaptive:
            error = max(-0.2, min(0.2, kl / self.target - 1.0))
            self.value *= 1.0 + error * n_sequences / self.horizon


def update_from_all_ranks(controller: KLController, kl: float, n_sequences: int, all_sum: AllSum) -> float:
    """Update ``controller`` from the rollouts of every rank: ``kl`` is this rank's mean KL per sequence
    over its ``n_sequences``, and β moves on the mean over all ranks' sequences. Returns that mean.

    Every rank must call it after each rollout (it is a collective). Each rank moving β on its own KL
    would let β, and with it the rewards, differ between ranks that train one policy.
    """
    kl_total, n_total = all_sum([kl * n_sequences, float(n_sequences)])
    mean = kl_total / n_total
    controller.update(mean, round(n_total))
    return mean
