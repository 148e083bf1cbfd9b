"""The offline base: a BPE tokenizer and a GPT-2 from config, pretraining, and save/load round-trips."""
from __future__ import annotations

import json

import torch

from tests.training.conftest import SENTENCES, write_jsonl
from training.config import PretrainConfig
from training.models import TINY_BASE, load_causal_lm, load_tokenizer, save_pretrained
from training.pretrain import pack, pretrain


def test_the_byte_level_tokenizer_round_trips_any_text(tiny_base):
    tokenizer = load_tokenizer(tiny_base)
    text = "Ünïcødé, emoji 🙂, tabs\tand\nnewlines — all bytes survive."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_a_saved_model_and_tokenizer_load_back_identically(tiny_base, tmp_path):
    model, tokenizer = load_causal_lm(tiny_base), load_tokenizer(tiny_base)
    save_pretrained(model, tokenizer, tmp_path / "copy")
    again = load_causal_lm(tmp_path / "copy")
    ids = torch.tensor([tokenizer("The cat sat on the mat")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert (tmp_path / "copy" / "model.safetensors").exists()
    assert load_tokenizer(tmp_path / "copy")("a b")["input_ids"] == tokenizer("a b")["input_ids"]


def test_a_float16_save_halves_the_file_and_loads_as_float32(tiny_base, tmp_path):
    model = load_causal_lm(tiny_base)
    save_pretrained(model, None, tmp_path / "fp32")
    save_pretrained(model, None, tmp_path / "fp16", dtype="float16")
    size = {d: (tmp_path / d / "model.safetensors").stat().st_size for d in ("fp32", "fp16")}
    assert size["fp16"] < 0.6 * size["fp32"]
    again = load_causal_lm(tmp_path / "fp16")
    assert next(again.parameters()).dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float32  # the in-memory model was not converted


def test_packing_joins_documents_with_eos_into_full_blocks(tiny_base):
    tokenizer = load_tokenizer(tiny_base)
    blocks = pack(tokenizer, SENTENCES, 16)
    assert all(len(ids) == 16 and n_prompt == 0 for ids, n_prompt in blocks)
    stream = [t for ids, _ in blocks for t in ids]
    assert stream.count(tokenizer.eos_token_id) >= len(SENTENCES) - 2


def test_pretraining_from_nothing_builds_a_tokenizer_and_model_and_lowers_the_loss(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": s} for s in SENTENCES * 10])
    config = PretrainConfig(vocab_size=320, n_layer=1, n_head=2, n_embd=32, n_positions=64, block_size=32,
                            batch_size=8, max_steps=25, warmup_steps=2, learning_rate=1e-2, eval_fraction=0.0,
                            device="cpu", log_every=1)
    logs = []
    result = pretrain(config, [corpus], tmp_path / "base", on_log=lambda s, t, m: logs.append(m["train/loss"]))
    assert result.status == "completed" and logs[-1] < logs[0] - 1.5
    assert json.loads((tmp_path / "base" / "config.json").read_text())["model_type"] == "gpt2"
    assert load_tokenizer(tmp_path / "base").chat_template is not None


def test_the_shipped_offline_base_is_small_loads_and_has_provenance():
    assert (TINY_BASE / "PROVENANCE.md").exists()
    total = sum(p.stat().st_size for p in TINY_BASE.rglob("*") if p.is_file())
    assert total < 10_000_000
    model, tokenizer = load_causal_lm(TINY_BASE), load_tokenizer(TINY_BASE)
    ids = tokenizer("\n\nHuman: How do I make tea?\n\nAssistant:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < 6.0  # well below uniform guessing (ln 4096 = 8.3): it was pretrained
