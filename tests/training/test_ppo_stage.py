"""The PPO stage on tiny models: it learns a rule-based reward, reports every metric, and keeps the
stage contract (outputs, cancellation, resume, LoRA, reward model, PPO-ptx)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.training.conftest import write_jsonl
from training.config import PPOConfig
from training.ppo import train_ppo

TARGET = "t"


def count_target(prompts: list[str], responses: list[str]) -> list[float]:
    """Synthetic reward: one point per occurrence of the target letter. Dense on purpose: with a rare word
    ("cat") whether the tiny model ever samples it in 40 iterations depends on the CPU's float kernels (it
    did on AVX2 machines, never on an AVX-512/AMX one with the same seed)."""
    return [float(r.lower().count(TARGET)) for r in responses]


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    topics = ["the mat", "a bird", "the rain", "some bread", "a song", "the sea", "a tree", "the snow"]
    return write_jsonl(tmp_path / "prompts.jsonl", [{"version": 1, "prompt": f"Tell me about {t}.", "id": str(i)}
                                                    for i, t in enumerate(topics * 4)])


def config(tiny_base, **overrides) -> PPOConfig:
    base = dict(policy=str(tiny_base), iterations=2, batch_size=8, minibatch_size=4, ppo_epochs=2,
                max_new_tokens=8, learning_rate=3e-3, critic_learning_rate=3e-3, kl_coef=0.01, seed=3,
                device="cpu", checkpoint_every=1, sample_every=1)
    base.update(overrides)
    return PPOConfig(**base)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ppo_raises_a_rule_based_reward_well_above_its_start(tiny_base, prompt_file, tmp_path):
    out = tmp_path / "ppo"
    result = train_ppo(config(tiny_base, iterations=40, batch_size=16, minibatch_size=8, max_new_tokens=10),
                       prompt_file, out, reward_fn=count_target)
    rows = metrics(out)
    start = sum(r["ppo/score"] for r in rows[:5]) / 5
    end = sum(r["ppo/score"] for r in rows[-5:]) / 5
    assert result.status == "completed" and len(rows) == 40
    assert end > start + 5.0 and end > 2 * start, (start, end)
    assert all(torch.isfinite(torch.tensor(r["ppo/kl"])) for r in rows)
    assert rows[-1]["ppo/kl"] > 0


def test_the_first_rollout_has_zero_kl_because_the_actor_starts_as_the_reference(tiny_base, prompt_file, tmp_path):
    out = tmp_path / "ppo"
    train_ppo(config(tiny_base, iterations=1), prompt_file, out, reward_fn=count_target)
    assert abs(metrics(out)[0]["ppo/kl"]) < 1e-4


def test_every_metric_is_reported_and_the_contract_files_are_written(tiny_base, prompt_file, tmp_path):
    out = tmp_path / "ppo"
    logged = []
    result = train_ppo(config(tiny_base), prompt_file, out, reward_fn=count_target,
                       on_log=lambda step, total, m: logged.append((step, total)))
    row = metrics(out)[-1]
    for name in ["ppo/score", "ppo/kl", "ppo/beta", "ppo/kl_penalty", "ppo/reward", "ppo/policy_loss",
                 "ppo/value_loss", "ppo/clipfrac", "ppo/value_clipfrac", "ppo/approx_kl", "ppo/entropy",
                 "ppo/advantage_mean", "ppo/advantage_std", "ppo/response_length", "ppo/eos_rate",
                 "time/generation", "time/scoring", "time/training"]:
        assert name in row, name
    assert logged == [(1, 2), (2, 2)]
    assert (out / "model.safetensors").exists() and (out / "stage_config.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"] == 2
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and {"iteration", "prompt", "response", "score"} <= set(samples[0])
    assert result.status == "completed"


def test_cancellation_stops_within_one_optimizer_step(tiny_base, prompt_file, tmp_path):
    calls = []

    def stop_after_three_checks() -> bool:
        calls.append(1)
        return len(calls) > 3

    out = tmp_path / "ppo"
    result = train_ppo(config(tiny_base, iterations=50), prompt_file, out, reward_fn=count_target,
                       should_stop=stop_after_three_checks)
    assert result.status == "stopped"
    assert len(calls) == 4          # 1 check before the rollout, then one after each optimizer step
    assert (out / "checkpoints" / "last.pt").exists()


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_resume_gives_the_same_policy_as_an_uninterrupted_run(tiny_base, prompt_file, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_ppo(config(tiny_base, iterations=4), prompt_file, straight, reward_fn=count_target)
    train_ppo(config(tiny_base, iterations=2), prompt_file, split, reward_fn=count_target)
    resumed = train_ppo(config(tiny_base, iterations=4), prompt_file, split, reward_fn=count_target)
    assert resumed.steps == 4 and len(metrics(split)) == 4
    a, b = weights(straight), weights(split)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    name = "transformer.h.0.attn.c_attn.weight"
    assert not torch.allclose(a[name], weights(tiny_base)[name])


def test_resume_with_ppo_ptx_continues_the_ptx_stream_where_it_stopped(tiny_base, prompt_file, sft_file, tmp_path):
    # 8 SFT rows in batches of 3: 2 batches per pass, 4 drawn per iteration, so the stream's passes and the
    # iterations do not line up and a restarted stream would feed different rows.
    ptx = dict(ptx_coef=0.5, ptx_batch_size=3)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_ppo(config(tiny_base, iterations=4, **ptx), prompt_file, straight, reward_fn=count_target,
              ptx_data=sft_file)
    train_ppo(config(tiny_base, iterations=2, **ptx), prompt_file, split, reward_fn=count_target, ptx_data=sft_file)
    resumed = train_ppo(config(tiny_base, iterations=4, **ptx), prompt_file, split, reward_fn=count_target,
                        ptx_data=sft_file)
    assert resumed.steps == 4
    for x, y in zip(metrics(straight), metrics(split), strict=True):
        assert x["step"] == y["step"]
        for name in x:
            if name.startswith("ppo/"):
                assert y[name] == pytest.approx(x[name], rel=1e-6, abs=1e-6), (x["step"], name)
    a, b = weights(straight), weights(split)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.fixture
def dropout_base(tiny_base, tmp_path) -> Path:
    """The tiny base with 30% dropout on embeddings, attention and residuals."""
    out = tmp_path / "dropout-base"
    shutil.copytree(tiny_base, out)
    model_config = json.loads((out / "config.json").read_text())
    model_config.update(embd_pdrop=0.3, attn_pdrop=0.3, resid_pdrop=0.3)
    (out / "config.json").write_text(json.dumps(model_config))
    return out


@pytest.mark.parametrize("lora", [False, True])
def test_dropout_is_off_so_the_first_minibatch_has_an_importance_ratio_of_one(dropout_base, prompt_file, tmp_path,
                                                                            lora):
    # One iteration, one epoch, one minibatch: its ratio π/π_old is taken before any optimizer step, so the
    # policy is the one that sampled the rollout and ρ must be 1 on every token.
    overrides = dict(lora=True, lora_r=4, lora_dropout=0.3) if lora else {}
    out = tmp_path / "ppo"
    train_ppo(config(dropout_base, iterations=1, ppo_epochs=1, minibatch_size=8, **overrides), prompt_file, out,
              reward_fn=count_target)
    row = metrics(out)[0]
    assert row["ppo/approx_kl"] < 1e-10 and row["ppo/clipfrac"] == 0
    assert row["ppo/ratio_min"] == pytest.approx(1, abs=1e-5)
    assert row["ppo/ratio_max"] == pytest.approx(1, abs=1e-5)


def test_a_lora_actor_uses_the_disabled_adapter_as_its_reference(tiny_base, prompt_file, tmp_path):
    out = tmp_path / "ppo"
    train_ppo(config(tiny_base, lora=True, lora_r=4, iterations=2, learning_rate=1e-2), prompt_file, out,
              reward_fn=count_target)
    rows = metrics(out)
    assert abs(rows[0]["ppo/kl"]) < 1e-4 and rows[1]["ppo/kl"] != 0
    assert (out / "model.safetensors").exists()  # adapters merged into a plain model


def test_a_reward_model_scores_rollouts_and_initialises_the_critic(tiny_base, prompt_file, tmp_path):
    from training.reward import RewardModel

    rm_dir = tmp_path / "rm"
    torch.manual_seed(0)
    RewardModel.from_pretrained(tiny_base).save_pretrained(rm_dir)
    out = tmp_path / "ppo"
    result = train_ppo(config(tiny_base, reward_model=str(rm_dir)), prompt_file, out)
    assert result.status == "completed"
    assert metrics(out)[0]["ppo/score"] != 0


def test_a_critic_training_only_its_top_layer_keeps_the_rest_as_the_reward_model_has_it(tiny_base, prompt_file,
                                                                                         tmp_path):
    from training import ppo
    from training.reward import RewardModel
    from training.runtime import init_runtime, unwrap

    rm_dir = tmp_path / "rm"
    torch.manual_seed(0)
    RewardModel.from_pretrained(tiny_base).save_pretrained(rm_dir)
    cfg = config(tiny_base, reward_model=str(rm_dir), critic_train_layers=1)
    models = ppo._load_models(cfg, None, init_runtime("cpu"))
    critic = unwrap(models.critic)
    trained = {n for n, p in critic.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in critic.named_parameters() if n.startswith(("backbone.h.1.", "backbone.ln_f.",
                                                                               "head."))}
    before = {n: p.detach().clone() for n, p in critic.named_parameters()}
    optimizer = ppo._optimizer(critic, 1e-2, cfg)
    ids = torch.tensor([[5, 6, 7, 8]])
    critic(ids, torch.ones_like(ids), torch.arange(4)[None]).pow(2).mean().backward()
    optimizer.step()
    for name, param in critic.named_parameters():
        assert torch.equal(param, before[name]) == (name not in trained), name
    assert train_ppo(cfg, prompt_file, tmp_path / "ppo").status == "completed"


def test_ppo_ptx_mixes_in_the_language_model_loss(tiny_base, prompt_file, sft_file, tmp_path):
    out = tmp_path / "ppo"
    train_ppo(config(tiny_base, ptx_coef=0.5, ptx_batch_size=2), prompt_file, out, reward_fn=count_target,
              ptx_data=sft_file)
    assert metrics(out)[-1]["ppo/ptx_loss"] > 0


def test_ppo_ptx_with_fewer_examples_than_one_batch_is_a_clear_error(tiny_base, prompt_file, sft_file, tmp_path):
    with pytest.raises(ValueError, match="fewer than ptx_batch_size"):
        train_ppo(config(tiny_base, ptx_coef=0.5, ptx_batch_size=9), prompt_file, tmp_path / "ppo",
                  reward_fn=count_target, ptx_data=sft_file)


def test_a_missing_reward_is_a_clear_error(tiny_base, prompt_file, tmp_path):
    with pytest.raises(ValueError, match="needs a reward"):
        train_ppo(config(tiny_base), prompt_file, tmp_path / "ppo")


def test_the_config_rejects_bad_values():
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="minibatch_size"):
        PPOConfig(policy="x", batch_size=4, minibatch_size=8)
    with pytest.raises(ConfigError, match="policy"):
        PPOConfig()
    assert PPOConfig.from_json(PPOConfig(policy="x", adaptive_kl=True).to_json()).adaptive_kl


def test_the_cli_runs_ppo_with_any_reward_callable(tiny_base, prompt_file, tmp_path):
    from training.cli import main

    out = tmp_path / "cli-ppo"
    code = main(["ppo", "--policy", str(tiny_base), "--prompts", str(prompt_file), "--out", str(out),
                 "--reward-fn", "tests.training.test_ppo_stage:count_target", "--iterations", "2",
                 "--batch-size", "4", "--minibatch-size", "2", "--max-new-tokens", "4", "--device", "cpu"])
    assert code == 0 and len(metrics(out)) == 2 and (out / "model.safetensors").exists()


# --- rollouts end exactly as candidates do --------------------------------------------------------------

def test_a_rollout_stops_where_a_candidate_would_before_an_invented_turn(tiny_base):
    from tests.training.test_generate import scripted
    from training.config import GenerateConfig
    from training.generate import generate
    from training.models import load_causal_lm, load_tokenizer
    from training.ppo import sample_responses

    model, tokenizer = load_causal_lm(tiny_base).eval(), load_tokenizer(tiny_base)
    script = tokenizer("Sure, here it is.\n\nHuman: and now a made-up question", add_special_tokens=False)["input_ids"]
    prompt = tokenizer("Hi", add_special_tokens=False)["input_ids"]
    ppo_config = PPOConfig(policy=str(tiny_base), max_new_tokens=30, batch_size=2, minibatch_size=1)
    with scripted(model, script):
        ids, _, _, n_prompt, mask, logprobs, ended = sample_responses(model, tokenizer, [prompt, prompt], ppo_config,
                                                                      torch.Generator().manual_seed(0))
    with scripted(model, script):
        candidate = generate(model, tokenizer, ["Hi"], GenerateConfig(model="-", k=1, temperature=0,
                                                                        max_new_tokens=30))[0][0]
    kept = int(mask[0].sum())
    response = tokenizer.decode(ids[0, n_prompt:n_prompt + kept], skip_special_tokens=True)
    # The same words as the candidate; only whitespace that shares a token with the marker may differ.
    assert candidate["text"].startswith(response) and candidate["text"][len(response):].strip() == ""
    assert response.startswith("Sure, here it is.")
    assert "Human" not in response and bool(ended[0]) and kept < 30
    assert float(logprobs[0, kept:].abs().sum()) == 0.0 and int(ids[0, n_prompt + kept]) == tokenizer.pad_token_id


def test_a_rollout_without_stop_rules_runs_to_max_new_tokens(tiny_base):
    from tests.training.test_generate import scripted
    from training.models import load_causal_lm, load_tokenizer
    from training.ppo import sample_responses

    model, tokenizer = load_causal_lm(tiny_base).eval(), load_tokenizer(tiny_base)
    script = tokenizer("Sure.\n\nHuman: more", add_special_tokens=False)["input_ids"]
    config = PPOConfig(policy=str(tiny_base), max_new_tokens=12, batch_size=1, minibatch_size=1,
                       stop_at_turn_end=False)
    with scripted(model, script):
        *_, mask, _, ended = sample_responses(model, tokenizer, [[5, 6]], config, torch.Generator().manual_seed(0))
    assert int(mask[0].sum()) == 12 and not bool(ended[0])


# --- held-out evaluation while training ------------------------------------------------------------------

def test_ppo_evaluates_on_held_out_prompts_before_during_and_after_training(tiny_base, prompt_file, tmp_path):
    from training.reward import RewardModel

    rm_dir, judge_dir = tmp_path / "rm", tmp_path / "judge"
    for seed, folder in ((0, rm_dir), (1, judge_dir)):
        torch.manual_seed(seed)
        RewardModel.from_pretrained(tiny_base).save_pretrained(folder)
    held_out = write_jsonl(tmp_path / "held_out.jsonl", [{"version": 1, "prompt": f"Describe colour {i}."}
                                                         for i in range(5)])
    out = tmp_path / "ppo"
    result = train_ppo(config(tiny_base, iterations=4, eval_every=2, eval_prompts=4, reward_model=str(rm_dir),
                              judge=str(judge_dir)), prompt_file, out, eval_data=held_out)
    evals = [r for r in metrics(out) if "eval/score" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert abs(evals[0]["eval/kl"]) < 1e-4                      # before training: the policy is the reference
    assert all({"eval/judge", "eval/length", "eval/eos_rate"} <= set(r) for r in evals)
    assert evals[0]["eval/judge"] != evals[0]["eval/score"]     # two reward models, two opinions
    assert result.summary["eval/score"] == evals[-1]["eval/score"] and evals[-1]["eval/kl"] != evals[0]["eval/kl"]


def test_the_held_out_evaluation_leaves_training_unchanged(tiny_base, prompt_file, tmp_path):
    held_out = write_jsonl(tmp_path / "held_out.jsonl", [{"version": 1, "prompt": "Describe the moon."}])
    plain = train_ppo(config(tiny_base, iterations=2), prompt_file, tmp_path / "a", reward_fn=count_target)
    evaluated = train_ppo(config(tiny_base, iterations=2, eval_every=1), prompt_file, tmp_path / "b",
                          reward_fn=count_target, eval_data=held_out)
    trained = [r for r in metrics(tmp_path / "b") if "ppo/kl" in r]
    assert [r["ppo/kl"] for r in trained] == [r["ppo/kl"] for r in metrics(tmp_path / "a")]
    assert plain.summary["ppo/kl"] == evaluated.summary["ppo/kl"]
