"""bench/policy_delta.py: a merged LoRA policy carried as its low-rank difference from the base is rebuilt
(weights and small files), and a difference that is not low-rank is refused rather than dropped."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "training" / "assets" / "tiny-base"


@pytest.fixture(scope="module")
def policy_delta():
    spec = importlib.util.spec_from_file_location("policy_delta", ROOT / "bench" / "policy_delta.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def changed_policy(tmp_path: Path, name: str, rank: int) -> tuple[Path, dict]:
    """A copy of the tiny base whose first two matrices moved by a difference of the given rank."""
    folder = tmp_path / name
    shutil.copytree(TINY, folder)
    (folder / "PROVENANCE.md").unlink()  # the base's own record; a trained policy has none
    state = load_file(str(folder / "model.safetensors"))
    generator = torch.Generator().manual_seed(rank)
    for key in [k for k, v in state.items() if v.dim() == 2][:2]:
        rows, cols = state[key].shape
        delta = 0.01 * torch.randn(rows, rank, generator=generator) @ torch.randn(rank, cols, generator=generator)
        state[key] = state[key] + delta
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "generation_config.json").write_text('{"max_new_tokens": 7}')  # a small file of its own
    return folder, state


def test_a_low_rank_policy_is_rebuilt_from_the_base_and_its_factors(policy_delta, tmp_path):
    folder, expected = changed_policy(tmp_path, "lora", rank=4)
    packed = tmp_path / "policies.safetensors"
    policy_delta.main(["pack", "--base", str(TINY), "--out", str(packed), "--rank", "4", f"ours-1={folder}"])
    assert packed.stat().st_size < (TINY / "model.safetensors").stat().st_size / 4

    policy_delta.main(["unpack", "--base", str(TINY), "--pack", str(packed), "--out", str(tmp_path / "rebuilt")])
    rebuilt = tmp_path / "rebuilt" / "ours-1"
    state = load_file(str(rebuilt / "model.safetensors"))
    assert state.keys() == expected.keys()
    base = load_file(str(TINY / "model.safetensors"))
    moved = max(float((expected[k] - base[k]).abs().max()) for k in base)
    assert max(float((state[k] - expected[k]).abs().max()) for k in state) < 2e-3 * moved  # float16 factors
    assert (rebuilt / "generation_config.json").read_text() == '{"max_new_tokens": 7}'
    assert (rebuilt / "tokenizer.json").read_bytes() == (TINY / "tokenizer.json").read_bytes()
    assert not (rebuilt / "PROVENANCE.md").exists()


def test_a_difference_above_the_rank_is_refused(policy_delta, tmp_path):
    folder, _ = changed_policy(tmp_path, "full", rank=12)
    packed = tmp_path / "policies.safetensors"
    with pytest.raises(SystemExit, match="rank above 4"):
        policy_delta.main(["pack", "--base", str(TINY), "--out", str(packed), "--rank", "4", f"full={folder}"])
    assert not packed.exists()
