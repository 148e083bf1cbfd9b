"""SFT: prompt masking, batching, schedule, overfitting, cancellation, resume, LoRA, best checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from training.config import ConfigError, SFTConfig
from training.data import RankingExample, best_ranked
from training.encoding import PromptTooLong, encode_pair, encode_prompt, encode_response
from training.loop import lr_at, plan_batches
from training.models import load_causal_lm, load_tokenizer
from training.sft import IGNORE, collate_lm, masked_lm_loss, train_sft


def config(base, **overrides) -> SFTConfig:
    values = dict(base=str(base), device="cpu", max_length=64, batch_size=4, learning_rate=3e-3, warmup_steps=0,
                  max_steps=4, log_every=1, eval_fraction=0.0, seed=1)
    return SFTConfig(**{**values, **overrides})


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_prompt_tokens_get_no_label_and_padding_none_either(tiny_base):
    tokenizer = load_tokenizer(tiny_base)
    ids, n_prompt = encode_pair(tokenizer, "Tell me one fact about cats.", "They purr.", max_length=64)
    short, n_short = encode_pair(tokenizer, "Hi", "Yo", max_length=64)
    batch = collate_lm([(ids, n_prompt), (short, n_short)], tokenizer.pad_token_id)
    assert batch["labels"][0, :n_prompt].eq(IGNORE).all()
    assert batch["labels"][0, n_prompt:len(ids)].tolist() == ids[n_prompt:]
    assert ids[-1] == tokenizer.eos_token_id  # the plain format ends the response with EOS
    assert batch["labels"][1, len(short):].eq(IGNORE).all() and batch["attention_mask"][1, len(short):].eq(0).all()


def test_the_loss_ignores_prompt_tokens():
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, 5, 6, IGNORE]])
    logits = torch.randn(1, 6, 10, generator=torch.Generator().manual_seed(0))
    loss, n = masked_lm_loss(logits, labels)
    changed = logits.clone()
    changed[0, :2] = 100 * torch.randn(2, 10)  # predictions of the prompt tokens 1, 2 (positions 0, 1)
    changed[0, 5] = 7.0                          # after the last label: predicts nothing
    assert n == 2
    assert masked_lm_loss(changed, labels)[0].item() == pytest.approx(loss.item(), abs=1e-6)
    by_hand = (torch.nn.functional.cross_entropy(logits[0, 2], torch.tensor(5))
               + torch.nn.functional.cross_entropy(logits[0, 3], torch.tensor(6))) / 2
    assert loss.item() == pytest.approx(by_hand.item(), abs=1e-6)


def test_an_over_long_prompt_is_cut_from_the_left_or_rejected(tiny_base):
    tokenizer = load_tokenizer(tiny_base)
    prompt = "word " * 200
    ids, n_prompt = encode_pair(tokenizer, prompt, "ok", max_length=32)
    response = encode_response(tokenizer, prompt, "ok")
    assert len(ids) == 32 and ids[n_prompt:] == response
    assert ids[:n_prompt] == encode_prompt(tokenizer, prompt)[-n_prompt:]  # the prompt's end survives
    with pytest.raises(PromptTooLong, match="only .* fit"):
        encode_pair(tokenizer, prompt, "ok", max_length=32, truncation="error")


def test_length_grouped_batches_cover_every_example_once_with_similar_lengths():
    lengths = [(i * 37) % 100 + 1 for i in range(256)]
    batches = plan_batches(lengths, 8, seed=0, epoch=0, group_by_length=True)
    assert sorted(i for b in batches for i in b) == list(range(256))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    shuffled = plan_batches(lengths, 8, seed=0, epoch=0, group_by_length=False)
    spread_random = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in shuffled) / len(shuffled)
    assert spread < spread_random / 5
    assert batches == plan_batches(lengths, 8, seed=0, epoch=0, group_by_length=True)
    assert batches != plan_batches(lengths, 8, seed=0, epoch=1, group_by_length=True)
    # Under DDP every global batch splits evenly over the ranks.
    assert all(len(b) == 16 for b in plan_batches(lengths[:100], 8, seed=0, epoch=0, group_by_length=True,
                                                   world_size=2))


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, peak=1.0, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4] == pytest.approx(1.0) and lrs[12] == pytest.approx(0.55) and lrs[20] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))


def test_weights_change_after_a_training_step(tiny_base, sft_file, tmp_path):
    before = weights(load_causal_lm(tiny_base))
    result = train_sft(config(tiny_base, max_steps=1), sft_file, tmp_path / "out")
    after = weights(result.model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "transformer.h.0.attn.c_attn.weight" in changed and len(changed) > len(before) // 2


def test_overfitting_eight_examples_drives_the_loss_down(tiny_base, sft_file, tmp_path):
    logs = []
    result = train_sft(config(tiny_base, max_steps=40, batch_size=8, learning_rate=1e-2), sft_file,
                       tmp_path / "out", eval_data=sft_file, on_log=lambda s, t, m: logs.append(m))
    losses = [m["train/loss"] for m in logs if "train/loss" in m]
    assert losses[0] > 4 and losses[-1] < 0.5 * losses[0]
    assert result.summary["eval/loss"] < 0.5 * losses[0]


def test_it_writes_metrics_config_and_summary_beside_the_best_model(tiny_base, sft_file, tmp_path):
    out = tmp_path / "out"
    result = train_sft(config(tiny_base, max_steps=4, eval_every=2), sft_file, out, eval_data=sft_file)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "eval/loss" in r] == [2, 4]
    assert json.loads((out / "stage_config.json").read_text())["config"]["max_steps"] == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["best_step"] in (2, 4) and summary["tokens"] > 0
    assert result.summary["best_eval_loss"] == min(r["eval/loss"] for r in rows if "eval/loss" in r)
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_cancellation_stops_within_one_step(tiny_base, sft_file, tmp_path):
    steps = []
    result = train_sft(config(tiny_base, max_steps=50), sft_file, tmp_path / "out",
                       on_log=lambda s, t, m: steps.append(s), should_stop=lambda: len(steps) >= 2)
    assert result.status == "stopped" and result.steps == 2 and max(steps) == 2
    assert (tmp_path / "out" / "checkpoints" / "last.pt").exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["status"] == "stopped"


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_base, sft_file, tmp_path):
    # grad_accum 2 and 3 epochs' worth of steps: the resumed run must pick up mid-epoch, mid-schedule.
    settings = dict(max_steps=6, batch_size=3, grad_accum=2, warmup_steps=2)
    straight = train_sft(config(tiny_base, **settings), sft_file, tmp_path / "straight")
    steps = []
    first = train_sft(config(tiny_base, **settings), sft_file, tmp_path / "resumed",
                      on_log=lambda s, t, m: steps.append(s), should_stop=lambda: len(steps) >= 3)
    assert first.steps == 3
    second = train_sft(config(tiny_base, **settings), sft_file, tmp_path / "resumed")
    assert second.steps == 6
    a, b = weights(straight.model), weights(second.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    key = "transformer.h.0.attn.c_attn.weight"
    assert not torch.allclose(a[key], weights(first.model)[key])


def test_lora_trains_only_adapters_and_saves_a_merged_model(tiny_base, sft_file, tmp_path):
    before = weights(load_causal_lm(tiny_base))
    result = train_sft(config(tiny_base, lora=True, lora_r=4, max_steps=3, learning_rate=1e-2), sft_file,
                       tmp_path / "out")
    assert result.summary["trainable_parameters"] < result.summary["parameters"] / 5
    merged = weights(load_causal_lm(tmp_path / "out"))
    assert set(merged) == set(before)  # a plain model: no adapter keys
    assert not torch.equal(merged["transformer.h.0.attn.c_attn.weight"], before["transformer.h.0.attn.c_attn.weight"])
    assert torch.equal(merged["transformer.wte.weight"], before["transformer.wte.weight"])


def test_the_chat_template_format_masks_the_templated_prompt(tiny_base, tmp_path):
    tokenizer = load_tokenizer(tiny_base)
    ids, n_prompt = encode_pair(tokenizer, "Hi there", "Hello", max_length=64, chat_template=True)
    assert tokenizer.decode(ids[:n_prompt]) == "<|user|>\nHi there<|endoftext|>\n<|assistant|>\n"
    # The response ends at the end-of-turn token, where generation stops (the template's "\n" after it is
    # left out), so that a PPO rollout and the same text encoded for the reward model are the same tokens.
    assert tokenizer.decode(ids[n_prompt:]) == "Hello<|endoftext|>"


def test_same_seed_same_model_different_seed_different_model(tiny_base, sft_file, tmp_path):
    a = train_sft(config(tiny_base, max_steps=2, seed=5), sft_file, tmp_path / "a").model
    b = train_sft(config(tiny_base, max_steps=2, seed=5), sft_file, tmp_path / "b").model
    c = train_sft(config(tiny_base, max_steps=2, seed=6), sft_file, tmp_path / "c").model
    key = "transformer.h.1.mlp.c_fc.weight"
    assert torch.equal(weights(a)[key], weights(b)[key]) and not torch.equal(weights(a)[key], weights(c)[key])


def test_best_ranked_takes_a_single_non_empty_rank_one_and_skips_ties_and_all_tied_rankings():
    def ranking(responses, ranks, id=None):
        return RankingExample(prompt="Q?", responses=responses, ranks=ranks, id=id)

    picked = best_ranked([ranking(["b", "a", "c"], [2, 1, 3], id="r1"),
                          ranking(["a", "b"], [1, 1]),             # all tied: no preference
                          ranking(["a", "b", "c"], [1, 1, 2]),     # two share the top: no single best
                          ranking(["  ", "b"], [1, 2])])           # the best is empty
    assert [(e.response, e.id) for e in picked] == [("a", "r1:best")]


def test_best_ranked_sft_trains_on_demonstrations_and_each_rankings_best_response(tiny_base, sft_file,
                                                                                  ranking_file, tmp_path):
    settings = dict(max_steps=30, batch_size=8, learning_rate=1e-2)
    plain = train_sft(config(tiny_base, **settings), sft_file, tmp_path / "plain", rankings=ranking_file)
    assert plain.summary["train_examples"] == 8 and plain.summary["best_ranked_examples"] == 0
    result = train_sft(config(tiny_base, best_ranked=True, **settings), sft_file, tmp_path / "out",
                       rankings=ranking_file)
    assert result.summary["best_ranked_examples"] == 8 and result.summary["train_examples"] == 16
    tokenizer = load_tokenizer(tiny_base)
    ids, n_prompt = encode_pair(tokenizer, "Question number 3: will you help?", "yes yes yes, glad to help",
                                max_length=64)

    @torch.no_grad()
    def nll(model) -> float:
        logits = model.eval()(input_ids=torch.tensor([ids])).logits
        return float(masked_lm_loss(logits, torch.tensor([[IGNORE] * n_prompt + ids[n_prompt:]]))[0])

    assert nll(result.model) < 0.5 * nll(plain.model)  # it learned the best-ranked answer; demos alone did not


def test_best_ranked_without_a_rankings_file_says_so(tiny_base, sft_file, tmp_path):
    with pytest.raises(ConfigError, match="best_ranked needs the rankings file"):
        train_sft(config(tiny_base, best_ranked=True), sft_file, tmp_path / "out")
