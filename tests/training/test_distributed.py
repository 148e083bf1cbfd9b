"""The stages run unchanged under torchrun: two CPU processes (gloo) end with identical weights (and, in
PPO, an identical KL coefficient)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.conftest import write_jsonl
from training.models import load_causal_lm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(worker: str, *args: Path, env: dict | None = None) -> None:
    """Run ``worker`` (beside this file) on 2 CPU processes; fail with its stderr if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         "--master_addr=127.0.0.1", str(Path(__file__).with_name(worker)), *map(str, args)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2],
        env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_sft_on_two_cpu_processes_ends_with_identical_weights_on_both_ranks(tiny_base, sft_file, tmp_path):
    torchrun("ddp_sft_worker.py", tiny_base, sft_file, tmp_path)
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


@pytest.mark.slow
def test_the_adaptive_kl_controller_gives_every_rank_the_same_beta_from_the_mean_kl(tiny_base, tmp_path):
    topics = ["the mat", "a bird", "the rain", "some bread", "a song", "the sea", "a tree", "the snow"]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"version": 1, "prompt": f"Tell me about {t}.", "id": str(i)}
                                                       for i, t in enumerate(topics * 4)])
    torchrun("ddp_ppo_worker.py", tiny_base, prompts, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    kls = sorted(r["kl"] for r in ranks)   # each rank's own KL in the last rollout
    if not kls[0] < ranks[0]["config"]["kl_target"] < kls[1] and (kls[0] + kls[1]) / 2 > 0:
        # Other float kernels, other KLs: run again with the target at their mean. The last rollout's KLs do
        # not depend on the target (the first update's error is clipped at -0.2 whatever it is).
        torchrun("ddp_ppo_worker.py", tiny_base, prompts, tmp_path, env={"KL_TARGET": repr((kls[0] + kls[1]) / 2 * 0.9)})
        ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
        assert sorted(r["kl"] for r in ranks) == kls
    config = ranks[0]["config"]
    beta0, target = config["kl_coef"], config["kl_target"]
    assert kls[0] < target < kls[1], f"not a test: both ranks' KLs {kls} lie on one side of {target}"
    # One update from the first rollout (KL 0: error clipped to −0.2), one from the mean of the second's;
    # 8 sequences (4 per rank) over a horizon of 8.
    error = max(-0.2, min(0.2, (kls[0] + kls[1]) / 2 / target - 1))
    expected = beta0 * (1 - 0.2) * (1 + error)
    assert ranks[0]["beta"] == ranks[1]["beta"] == pytest.approx(expected, rel=1e-9)
    assert ranks[0]["beta"] != beta0
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
