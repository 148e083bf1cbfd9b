"""The stages run unchanged under torchrun: two CPU processes (gloo) end with identical weights."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.models import load_causal_lm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sft_on_two_cpu_processes_ends_with_identical_weights_on_both_ranks(tiny_base, sft_file, tmp_path):
    worker = Path(__file__).with_name("ddp_sft_worker.py")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         "--master_addr=127.0.0.1", str(worker), str(tiny_base), str(sft_file), str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    start = load_causal_lm(tiny_base).state_dict()
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    assert not torch.equal(ranks[0]["state"]["transformer.h.0.attn.c_attn.weight"],
                           start["transformer.h.0.attn.c_attn.weight"])
    # Only rank 0 reports; the token count covers both ranks' slices (8 examples, 2 per rank per micro-step).
    assert ranks[0]["logged"] == [1, 2, 3] and ranks[1]["logged"] == []
    assert ranks[0]["tokens"] == ranks[1]["tokens"] > 0
    assert (tmp_path / "model" / "model.safetensors").exists()
