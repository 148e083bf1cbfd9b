"""Run by torchrun in test_distributed.py: SFT on each rank, then each rank dumps its own weights."""
import os
import sys
from pathlib import Path

import torch

from training.config import SFTConfig
from training.sft import train_sft

base, data, out = map(Path, sys.argv[1:4])
config = SFTConfig(base=str(base), device="cpu", max_length=64, batch_size=2, grad_accum=2, max_steps=3,
                   learning_rate=3e-3, warmup_steps=0, eval_fraction=0.0, log_every=1, seed=3)
logged = []
result = train_sft(config, data, out / "model", on_log=lambda s, t, m: logged.append(s))
rank = int(os.environ["RANK"])
torch.save({"state": result.model.state_dict(), "logged": logged, "tokens": result.summary["tokens"]},
           out / f"rank{rank}.pt")
