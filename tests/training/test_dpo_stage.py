"""The DPO stage on the tiny base: it learns the rankings' order (implicit-reward accuracy), starts exactly at
the reference, and keeps the stage contract (progress callback, outputs, cancellation, resume, LoRA, CLI)."""
from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.config import ConfigError, DPOConfig
from training.dpo import train_dpo

# ranking_records(): two rankings each of k = 2 [1, 2], k = 3 [1, 2, 3], k = 4 [1, 2, 2, 3], k = 5 [1, 2, 2, 2, 3].
# With every implicit reward 0 a response chosen from n candidates costs log n, so the listwise loss is:
ZERO_REWARD_LOSS = (math.log(2) + (math.log(3) + math.log(2)) + (math.log(4) + 2 * math.log(3))
                    + (math.log(5) + 3 * math.log(4))) / 4


def config(base, **overrides) -> DPOConfig:
    values = dict(base=str(base), device="cpu", max_length=64, batch_size=8, learning_rate=3e-3, warmup_steps=0,
                  max_steps=3, log_every=1, eval_fraction=0.0, seed=1, beta=0.1)
    return DPOConfig(**{**values, **overrides})


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_raises_the_implicit_reward_ranking_accuracy_on_its_training_rankings(tiny_base, ranking_file, tmp_path):
    out = tmp_path / "dpo"
    result = train_dpo(config(tiny_base, eval_every=1), ranking_file, out, eval_data=ranking_file)
    train = [r for r in metrics(out) if "train/loss" in r]
    evals = [r for r in metrics(out) if "eval/accuracy" in r]
    assert train[0]["train/accuracy"] == 0.0        # before the first step every implicit reward is 0
    assert evals[-1]["eval/accuracy"] == 1.0 and {"eval/accuracy_k2", "eval/accuracy_k5"} <= set(evals[-1])
    assert evals[-1]["eval/margin"] > 0
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"] < ZERO_REWARD_LOSS
    assert result.status == "completed" and result.summary["eval/accuracy"] == 1.0


def test_the_first_step_starts_at_the_reference_so_its_loss_is_the_zero_reward_loss(tiny_base, ranking_file,
                                                                                     tmp_path):
    # The reference log-probs are precomputed; the policy's own, at step 1, must match them token for token.
    for lora in (False, True):
        out = tmp_path / f"dpo-{lora}"
        train_dpo(config(tiny_base, max_steps=1, lora=lora, lora_r=4), ranking_file, out)
        assert metrics(out)[0]["train/loss"] == pytest.approx(ZERO_REWARD_LOSS, abs=1e-5)
        assert metrics(out)[0]["train/margin"] == pytest.approx(0.0, abs=1e-6)


def test_pairwise_dpo_learns_the_order_too(tiny_base, ranking_file, tmp_path):
    out = tmp_path / "dpo"
    result = train_dpo(config(tiny_base, loss="pairwise"), ranking_file, out, eval_data=ranking_file)
    assert metrics(out)[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)  # −log σ(0) on every pair
    assert result.summary["eval/accuracy"] == 1.0 and result.summary["loss"] == "pairwise"


def test_the_progress_callback_gets_every_step_and_the_contract_files_are_written(tiny_base, ranking_file, tmp_path):
    out = tmp_path / "dpo"
    logged = []
    train_dpo(config(tiny_base), ranking_file, out, eval_data=ranking_file,
              on_log=lambda step, total, m: logged.append((step, total, sorted(m))))
    assert [(s, t) for s, t, _ in logged] == [(1, 3), (2, 3), (3, 3), (3, 3)]  # three steps, then the eval
    assert {"train/loss", "train/accuracy", "train/margin", "train/lr"} <= set(logged[0][2])
    assert "eval/accuracy" in logged[-1][2]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "stage_config.json", "summary.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "stage_config.json").read_text())["stage"] == "dpo"


def test_a_stop_ends_within_one_step_and_the_rerun_gives_the_policy_of_an_uninterrupted_run(tiny_base, ranking_file,
                                                                                            tmp_path):
    # Batches of 3 rankings with grad_accum 2: the stop falls mid-epoch and mid-schedule.
    settings = dict(max_steps=5, batch_size=3, grad_accum=2, warmup_steps=2)
    train_dpo(config(tiny_base, **settings), ranking_file, tmp_path / "straight")
    steps = []
    first = train_dpo(config(tiny_base, **settings), ranking_file, tmp_path / "resumed",
                      on_log=lambda s, t, m: steps.append(s), should_stop=lambda: len(steps) >= 2)
    assert first.status == "stopped" and first.steps == 2 and steps == [1, 2]
    assert (tmp_path / "resumed" / "checkpoints" / "last.pt").exists()
    second = train_dpo(config(tiny_base, **settings), ranking_file, tmp_path / "resumed")
    assert second.steps == 5 and [r["step"] for r in metrics(tmp_path / "resumed")] == [1, 2, 3, 4, 5]
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    name = "transformer.h.0.attn.c_attn.weight"
    assert not torch.allclose(a[name], load_file(str(tiny_base / "model.safetensors"))[name])


def test_the_config_rejects_bad_values_and_round_trips_through_json():
    with pytest.raises(ConfigError, match="base"):
        DPOConfig()
    with pytest.raises(ConfigError, match="beta"):
        DPOConfig(base="x", beta=0)
    with pytest.raises(ConfigError, match="loss"):
        DPOConfig(base="x", loss="triplet")
    assert DPOConfig.from_json(DPOConfig(base="x", loss="pairwise").to_json()).loss == "pairwise"


@pytest.fixture
def _restore_sigint():
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def test_the_cli_runs_dpo(tiny_base, ranking_file, tmp_path, _restore_sigint):
    from training.cli import main

    out = tmp_path / "cli-dpo"
    code = main(["dpo", "--base", str(tiny_base), "--data", str(ranking_file), "--out", str(out), "--loss",
                 "pairwise", "--max-steps", "2", "--max-length", "64", "--eval-fraction", "0", "--device", "cpu"])
    assert code == 0 and json.loads((out / "summary.json").read_text())["loss"] == "pairwise"
