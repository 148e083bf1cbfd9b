"""Reward model: scalar head at the last token, k-way training, normalisation, metrics, save/load."""
from __future__ import annotations

import json

import pytest
import torch

from tests.training.conftest import sft_records, write_jsonl
from training.config import ConfigError, RewardConfig
from training.models import load_tokenizer
from training.reward import RewardModel, collate_rankings, encode_ranking, score_pairs, train_reward_model


def config(base, **overrides) -> RewardConfig:
    values = dict(base=str(base), device="cpu", max_length=64, batch_size=4, learning_rate=3e-3, warmup_steps=0,
                  max_steps=4, log_every=1, eval_fraction=0.0, seed=1)
    return RewardConfig(**{**values, **overrides})


def test_the_head_reads_the_last_real_token_so_padding_changes_nothing(tiny_base):
    torch.manual_seed(0)
    model = RewardModel.from_pretrained(tiny_base).eval()
    tokenizer = load_tokenizer(tiny_base)
    alone = score_pairs(model, tokenizer, [("Is it?", "Yes, it is.")])
    padded = score_pairs(model, tokenizer, [("Is it?", "Yes, it is."), ("Is it? " * 10, "No " * 20)])
    assert padded[0] == pytest.approx(alone[0], abs=1e-5)
    # Reading the last token means the score depends on the end of the response too.
    assert score_pairs(model, tokenizer, [("Is it?", "Yes, it is not.")])[0] != pytest.approx(alone[0], abs=1e-4)


def test_a_group_of_k_responses_takes_k_rows_once(tiny_base):
    tokenizer = load_tokenizer(tiny_base)
    cfg = config(tiny_base)
    from training.data import RankingExample

    groups = [encode_ranking(tokenizer, RankingExample("p", ["a", "b", "c"], [1, 2, 2]), cfg),
              encode_ranking(tokenizer, RankingExample("q", ["a", "b"], [2, 1]), cfg)]
    batch = collate_rankings(groups, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 5  # k forward rows, not 2 per comparison
    assert batch["slots"].tolist() == [[0, 1, 2], [3, 4, -1]]
    assert batch["ranks"].tolist() == [[1, 2, 2], [2, 1, 0]]


def test_overfitting_eight_rankings_reaches_full_accuracy(tiny_base, ranking_file, tmp_path):
    result = train_reward_model(config(tiny_base, max_steps=30, batch_size=8), ranking_file, tmp_path / "rm",
                                eval_data=ranking_file)
    assert result.summary["eval/accuracy"] == 1.0
    assert result.summary["eval/loss"] < 0.2
    for k in (2, 3, 4, 5):
        assert result.summary[f"eval/accuracy_k{k}"] == 1.0
    assert result.summary["eval/margin"] > 0 and result.summary["eval/reward_std"] > 0
    assert result.summary["train_k"] == {"2": 2, "3": 2, "4": 2, "5": 2}


def test_demonstrations_score_mean_zero_after_training(tiny_base, ranking_file, tmp_path):
    demos = write_jsonl(tmp_path / "demos.jsonl", sft_records(6))
    result = train_reward_model(config(tiny_base, max_steps=5), ranking_file, tmp_path / "rm", demonstrations=demos)
    model = RewardModel.from_pretrained(tmp_path / "rm")
    tokenizer = load_tokenizer(tmp_path / "rm")
    rewards = score_pairs(model, tokenizer, [(r["prompt"], r["response"]) for r in sft_records(6)])
    assert sum(rewards) / len(rewards) == pytest.approx(0.0, abs=1e-4)
    assert result.summary["demonstrations"] == 6 and result.summary["bias_shift"] != 0


def test_a_saved_reward_model_loads_with_the_same_scores(tiny_base, ranking_file, tmp_path):
    result = train_reward_model(config(tiny_base, max_steps=2, normalize=False), ranking_file, tmp_path / "rm")
    tokenizer = load_tokenizer(tmp_path / "rm")
    pairs = [("Question number 1: will you help?", "yes yes yes"), ("Another", "no.")]
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    assert score_pairs(loaded, tokenizer, pairs) == pytest.approx(score_pairs(result.model, tokenizer, pairs), abs=1e-5)
    assert json.loads((tmp_path / "rm" / "reward_config.json").read_text())["type"] == "training.reward.RewardModel"


def test_held_out_metrics_are_reported_per_k(tiny_base, ranking_file, tmp_path):
    logs = []
    train_reward_model(config(tiny_base, max_steps=2, eval_every=1), ranking_file, tmp_path / "rm",
                       eval_data=ranking_file, on_log=lambda s, t, m: logs.append(m))
    evals = [m for m in logs if "eval/loss" in m]
    assert len(evals) == 2
    assert {"eval/accuracy", "eval/accuracy_k2", "eval/accuracy_k5", "eval/margin", "eval/reward_mean",
            "eval/reward_std"} <= set(evals[0])
    assert "train/loss" in logs[0] and "train/accuracy" in logs[0]
    p, n = evals[0]["eval/accuracy"], evals[0]["eval/pairs"]
    assert n > 0 and evals[0]["eval/accuracy_stderr"] == pytest.approx((p * (1 - p) / n) ** 0.5)


def test_lora_reward_model_trains_adapters_and_the_head(tiny_base, ranking_file, tmp_path):
    result = train_reward_model(config(tiny_base, max_steps=2, lora=True, lora_r=2), ranking_file, tmp_path / "rm")
    assert result.status == "completed"
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    assert not any("lora" in k for k in loaded.state_dict())


def test_openassistant_groups_up_to_nine_train_through_the_k_way_path(tiny_base, shared_data, tmp_path):
    from training import data, sources

    groups = sorted(sources.oasst_rankings(shared_data / "open-assistant/en_100_tree.jsonl"), key=lambda e: -e.k)[:6]
    path = tmp_path / "oa.jsonl"
    data.write_jsonl(path, map(data.to_record, groups))
    result = train_reward_model(config(tiny_base, max_steps=2, batch_size=3, max_length=48), path, tmp_path / "rm",
                                eval_data=path)
    assert result.summary["train_k"]["9"] == 1 and result.summary["train_k"]["8"] == 1
    assert "eval/accuracy_k9" in result.summary and result.summary["eval/pairs"] > 36


def test_reward_training_stops_within_one_step_and_resumes(tiny_base, ranking_file, tmp_path):
    steps = []
    stopped = train_reward_model(config(tiny_base, max_steps=6), ranking_file, tmp_path / "rm",
                                 on_log=lambda s, t, m: steps.append(s), should_stop=lambda: len(steps) >= 1)
    assert stopped.status == "stopped" and stopped.steps == 1
    finished = train_reward_model(config(tiny_base, max_steps=6), ranking_file, tmp_path / "rm")
    assert finished.status == "completed" and finished.steps == 6
    assert (tmp_path / "rm" / "reward_head.safetensors").exists()


def test_training_the_top_layers_on_cached_states_gives_the_full_models_rewards_and_gradients(tiny_llama):
    from training.data import RankingExample

    tokenizer = load_tokenizer(tiny_llama)
    cfg = config(tiny_llama)
    groups = [encode_ranking(tokenizer, RankingExample("Will you help?", ["yes, gladly", "no."], [1, 2]), cfg),
              encode_ranking(tokenizer, RankingExample("A longer question " * 3, ["ok", "not now", "never"],
                                                       [2, 1, 3]), cfg)]
    full, cached = RewardModel.from_pretrained(tiny_llama), RewardModel.from_pretrained(tiny_llama)
    cached.head.load_state_dict(full.head.state_dict())  # a new head is drawn at random
    cached.train_top(1)
    from training.reward import cache_features, rm_step

    features = cache_features(cached, groups, tokenizer.pad_token_id)
    assert [len(f) for f in features[1]] == [len(s) for s in groups[1][0]]  # unpadded, per response
    batch_full = collate_rankings(groups, tokenizer.pad_token_id)
    batch_cached = collate_rankings(groups, tokenizer.pad_token_id, features)
    loss_full, _, _ = rm_step(full.train(), batch_full)
    loss_cached, _, _ = rm_step(cached.train(), batch_cached)
    assert loss_cached.item() == pytest.approx(loss_full.item(), abs=1e-5)
    loss_full.backward()
    loss_cached.backward()
    top = dict(full.named_parameters())
    trained = {n for n, p in cached.named_parameters() if p.requires_grad}
    assert trained == {n for n in top if n.startswith(("backbone.layers.2.", "backbone.norm.", "head."))}
    for name, param in cached.named_parameters():
        if name in trained:
            torch.testing.assert_close(param.grad, top[name].grad, atol=1e-5, rtol=1e-4)
        else:
            assert param.grad is None


def test_train_layers_trains_only_the_top_and_reaches_full_accuracy(tiny_llama, ranking_file, tmp_path):
    before = RewardModel.from_pretrained(tiny_llama).state_dict()
    result = train_reward_model(config(tiny_llama, train_layers=1, max_steps=30, batch_size=8), ranking_file,
                                tmp_path / "rm", eval_data=ranking_file)
    assert result.summary["eval/accuracy"] == 1.0
    assert result.summary["cache_seconds"] > 0 and result.summary["comparisons_per_s"] > 0
    assert result.summary["trainable_parameters"] < result.summary["parameters"]
    after = RewardModel.from_pretrained(tmp_path / "rm").state_dict()
    for name in ("backbone.embed_tokens.weight", "backbone.layers.0.mlp.up_proj.weight",
                 "backbone.layers.1.self_attn.q_proj.weight"):
        assert torch.equal(before[name], after[name]), name
    top = "backbone.layers.2.mlp.up_proj.weight"
    assert not torch.equal(before[top], after[top])
    # The saved model is a whole reward model: loaded fresh, it scores as the summary says.
    rows = [json.loads(line) for line in ranking_file.read_text().splitlines()]
    model, tokenizer = RewardModel.from_pretrained(tmp_path / "rm"), load_tokenizer(tmp_path / "rm")
    best = score_pairs(model, tokenizer, [(r["prompt"], r["responses"][0]) for r in rows])
    worst = score_pairs(model, tokenizer, [(r["prompt"], r["responses"][-1]) for r in rows])
    assert all(b > w for b, w in zip(best, worst, strict=True))
    # Bias normalised on the cached best responses: they score mean 0.
    assert sum(best) / len(best) == pytest.approx(0.0, abs=1e-3)


def test_train_layers_on_a_backbone_that_cannot_be_split_is_a_clear_error(tiny_base, ranking_file, tmp_path):
    with pytest.raises(ValueError, match="Llama-style backbone"):
        train_reward_model(config(tiny_base, train_layers=1), ranking_file, tmp_path / "rm")


def test_train_layers_and_lora_are_exclusive(tiny_base):
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="exclusive"):
        config(tiny_base, train_layers=2, lora=True)


def test_the_responses_of_a_ranking_share_one_prompt_cut_and_its_states_are_computed_once(tiny_llama):
    from training.data import RankingExample
    from training.reward import cache_features

    tokenizer = load_tokenizer(tiny_llama)
    example = RankingExample("Please explain how a reward model ranks answers. " * 4,
                             ["yes", "a much longer answer that takes many more tokens than the first " * 2], [1, 2])
    (short, long), *_ = encode_ranking(tokenizer, example, config(tiny_llama, max_length=48))
    from training.encoding import encode_group

    _, n_prompt = encode_group(tokenizer, example.prompt, example.responses, max_length=48)
    assert len(long) == 48 and n_prompt == 24  # the long response is cut to leave the prompt half
    assert short[:n_prompt] == long[:n_prompt]  # the prompt is cut once, for the longest response
    model = RewardModel.from_pretrained(tiny_llama)
    model.train_top(1)
    calls = []
    original = model.features
    model.features = lambda ids, *a, **kw: calls.append(ids.shape) or original(ids, *a, **kw)
    (shared_short, shared_long), = cache_features(model, [([short, long], [1, 2], 1.0)], tokenizer.pad_token_id)
    assert calls[0] == (1, n_prompt)  # the prompt ran once, then both continuations on its cache
    for seq, state in ((short, shared_short), (long, shared_long)):
        ids = torch.tensor([seq])
        torch.testing.assert_close(state, original(ids, torch.ones_like(ids))[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("targets, adapted", [
    ("", {"q_proj", "v_proj"}),
    ("all-linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ("q_proj, down_proj", {"q_proj", "down_proj"}),
])
def test_lora_adapts_the_modules_lora_targets_names(tiny_llama, ranking_file, tmp_path, targets, adapted):
    from training.models import add_lora

    model = RewardModel.from_pretrained(tiny_llama)
    model.backbone = add_lora(model.backbone, config(tiny_llama, lora=True, lora_r=2, lora_targets=targets),
                              task_type="FEATURE_EXTRACTION")
    names = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert names == adapted
    result = train_reward_model(config(tiny_llama, max_steps=1, lora=True, lora_r=2, lora_targets=targets),
                                ranking_file, tmp_path / "rm")
    assert result.status == "completed" and result.summary["trainable_parameters"] > 0


def test_lora_targets_rejects_an_empty_module_name():
    with pytest.raises(ConfigError, match="lora_targets"):
        RewardConfig(base="b", lora=True, lora_targets="q_proj,,v_proj")
