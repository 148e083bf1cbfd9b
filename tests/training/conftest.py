"""Tiny models built from config (never downloaded) and small contract files for the training tests."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

SENTENCES = [
    "The cat sat on the warm mat and watched the birds outside.",
    "Please explain how a reward model ranks several answers to one question.",
    "A good answer is short, correct and polite.",
    "Water boils at one hundred degrees at sea level.",
    "The quick brown fox jumps over the lazy dog.",
    "Human: What is the capital of France? Assistant: Paris is the capital of France.",
    "Training a small model on a laptop takes minutes, not hours.",
    "Rank one is best; equal ranks are ties.",
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sft_records(n: int = 8) -> list[dict]:
    topics = ["cats", "rain", "bread", "music", "trees", "boats", "snow", "tea", "maps", "stars", "clocks", "bees"]
    return [{"version": 1, "prompt": f"Tell me one fact about {topics[i % len(topics)]}.",
             "response": f"Here is a fact about {topics[i % len(topics)]}: they are number {i}."} for i in range(n)]


def ranking_records() -> list[dict]:
    """8 groups, k = 2..5, with ties; the best response always says 'yes', the worst 'no'."""
    out = []
    for i in range(8):
        k = 2 + i % 4
        responses = ["yes yes yes, glad to help"] + [f"maybe {'so ' * j}perhaps" for j in range(k - 2)] + ["no."]
        ranks = [1] + [2] * (k - 2) + [3 if k > 2 else 2]
        out.append({"version": 1, "prompt": f"Question number {i}: will you help?", "responses": responses,
                    "ranks": ranks})
    return out


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide GPT-2 with a BPE tokenizer trained on a few sentences, saved to disk."""
    from training.config import PretrainConfig
    from training.models import build_model, save_pretrained, train_tokenizer

    out = tmp_path_factory.mktemp("tiny-base")
    corpus = SENTENCES * 20 + [r["prompt"] + " " + r["response"] for r in sft_records(12)]
    tokenizer = train_tokenizer(corpus, vocab_size=400)
    config = PretrainConfig(n_layer=2, n_head=2, n_embd=32, n_positions=128, block_size=64)
    import torch

    torch.manual_seed(0)
    save_pretrained(build_model(tokenizer, config), tokenizer, out)
    return out


@pytest.fixture
def sft_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "sft.jsonl", sft_records(8))


@pytest.fixture
def ranking_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "rankings.jsonl", ranking_records())


@pytest.fixture(scope="session")
def tiny_llama(tiny_base, tmp_path_factory):
    """A 3-layer Llama (rotary positions, RMSNorm) with the tiny base's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_base)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                                         eos_token_id=tokenizer.eos_token_id))
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
