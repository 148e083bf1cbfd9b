"""Run by torchrun in test_distributed.py: 2 PPO iterations with the adaptive KL controller on each rank,
then each rank dumps its final β, its own last rollout KL, its actor's weights and the config."""
import os
import sys
from pathlib import Path

import torch

from training.config import PPOConfig
from training.ppo import train_ppo

base, prompts, out = map(Path, sys.argv[1:4])


def count_cat(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(r.lower().count("cat")) for r in responses]


# With seed 0 the ranks' second rollouts have KLs of about +0.29 and −0.23 nats per sequence: on opposite
# sides of kl_target, so β computed from each rank's own KL would move up on one rank and down on the other.
# Their mean (about 0.031) is within 20% of the target, where the controller's error is not clipped. Those
# numbers depend on the CPU's float kernels (an AVX-512/AMX machine gives 0.07 and 0.20): the test then sets
# KL_TARGET between them, which changes nothing before the last rollout (see test_distributed.py).
config = PPOConfig(policy=str(base), device="cpu", seed=0, iterations=2, batch_size=4, minibatch_size=2,
                   ppo_epochs=2, max_new_tokens=6, learning_rate=3e-3, critic_learning_rate=3e-3, kl_coef=0.1,
                   adaptive_kl=True, kl_target=float(os.environ.get("KL_TARGET", "0.03")), kl_horizon=8, checkpoint_every=100)
result = train_ppo(config, prompts, out / "ppo", reward_fn=count_cat)
rank = int(os.environ["RANK"])
torch.save({"beta": result.summary["final_kl_coef"], "kl": result.summary["ppo/kl"], "config": config.to_dict(),
            "state": result.model.state_dict()}, out / f"rank{rank}.pt")
