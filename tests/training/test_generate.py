"""Generation: seeds, batching with the KV cache, per-candidate fields, finish reasons, truncation."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch

from tests.training.conftest import write_jsonl
from training.config import GenerateConfig
from training.data import PPOPrompt
from training.encoding import PromptTooLong, encode_prompt
from training.generate import fingerprint, generate, generate_candidates, process_logits
from training.models import load_causal_lm, load_tokenizer

PROMPTS = ["Tell me one fact about cats.", [{"role": "user", "content": "Will you help?"}], "The quick brown"]


@pytest.fixture(scope="module")
def lm(tiny_base):
    torch.manual_seed(0)
    return load_causal_lm(tiny_base), load_tokenizer(tiny_base)


def gen_config(tiny_base, **overrides) -> GenerateConfig:
    return GenerateConfig(**{"model": str(tiny_base), "k": 3, "max_new_tokens": 12, "seed": 7, "device": "cpu",
                             **overrides})


def texts(results) -> list[list[str]]:
    return [[c["text"] for c in group] for group in results]


def test_generation_is_reproducible_from_a_seed(lm, tiny_base):
    model, tokenizer = lm
    first = generate(model, tokenizer, PROMPTS, gen_config(tiny_base))
    again = generate(model, tokenizer, PROMPTS, gen_config(tiny_base))
    other = generate(model, tokenizer, PROMPTS, gen_config(tiny_base, seed=8))
    assert first == again
    assert texts(first) != texts(other)
    assert [len(group) for group in first] == [3, 3, 3]
    assert len({c["text"] for c in first[0]}) > 1  # the k candidates differ from one another


def test_a_candidate_does_not_depend_on_its_batch(lm, tiny_base):
    model, tokenizer = lm
    together = generate(model, tokenizer, PROMPTS, gen_config(tiny_base, batch_size=9))
    alone = generate(model, tokenizer, PROMPTS, gen_config(tiny_base, batch_size=1))
    assert texts(together) == texts(alone)
    for a, b in zip(sum(together, []), sum(alone, []), strict=True):
        assert a["mean_logprob"] == pytest.approx(b["mean_logprob"], abs=1e-4)


def test_greedy_decoding_with_the_cache_matches_transformers_generate(lm, tiny_base):
    model, tokenizer = lm
    ours = generate(model, tokenizer, ["The cat sat"], gen_config(tiny_base, k=1, temperature=0, max_new_tokens=10))
    ids = torch.tensor([encode_prompt(tokenizer, "The cat sat")])
    reference = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    expected = reference[0, ids.shape[1]:].tolist()
    if tokenizer.eos_token_id in expected:
        expected = expected[:expected.index(tokenizer.eos_token_id) + 1]
    assert ours[0][0]["text"] == tokenizer.decode(expected, skip_special_tokens=True)
    assert ours[0][0]["tokens"] == len(expected)


def test_mean_logprob_is_the_models_own_log_probability_of_the_tokens(lm, tiny_base):
    model, tokenizer = lm
    cfg = gen_config(tiny_base, k=1, temperature=0.8, top_k=20, max_new_tokens=6)
    candidate = generate(model, tokenizer, ["Water boils"], cfg)[0][0]
    prompt = encode_prompt(tokenizer, "Water boils")
    new = candidate["token_ids"]
    assert len(new) == candidate["tokens"] >= 1 and tokenizer.decode(new, skip_special_tokens=True) == candidate["text"]
    ids = torch.tensor([prompt + new])
    with torch.no_grad():
        logprobs = model(ids).logits[0, :-1].log_softmax(-1)
    expected = sum(float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(new)) / len(new)
    assert candidate["mean_logprob"] == pytest.approx(expected, abs=1e-4)


def test_finish_reasons_are_eos_stop_or_length(lm, tiny_base):
    model, tokenizer = lm
    short = generate(model, tokenizer, PROMPTS, gen_config(tiny_base, max_new_tokens=2))
    assert {c["finish_reason"] for group in short for c in group} <= {"length", "eos"}
    assert all(c["tokens"] <= 2 for group in short for c in group)
    # Force EOS: make it the only token allowed.
    eos_cfg = gen_config(tiny_base, k=1, temperature=0)
    bias = torch.full((model.config.vocab_size,), -1e4)
    bias[tokenizer.eos_token_id] = 0
    original = model.lm_head.forward
    model.lm_head.forward = lambda h: original(h) + bias
    try:
        done = generate(model, tokenizer, ["Hi"], eos_cfg)[0][0]
    finally:
        model.lm_head.forward = original
    assert (done["finish_reason"], done["tokens"], done["text"]) == ("eos", 1, "")
    # A stop sequence that any text contains: the first character it generates.
    free = generate(model, tokenizer, ["Hi"], gen_config(tiny_base, k=1, temperature=0))[0][0]["text"]
    stopped = generate(model, tokenizer, ["Hi"], gen_config(tiny_base, k=1, temperature=0, stop=[free[1:3]]))[0][0]
    assert stopped["finish_reason"] == "stop" and stopped["text"] == free[:1 + free[1:].find(free[1:3])]


def test_a_prompt_longer_than_the_context_is_cut_from_the_left_or_rejected(lm, tiny_base):
    model, tokenizer = lm
    long_prompt = "the cat sat on the mat " * 60  # far beyond the 128-token context
    cut = generate(model, tokenizer, [long_prompt], gen_config(tiny_base, k=1, max_new_tokens=8))
    assert cut[0][0]["tokens"] >= 1
    with pytest.raises(PromptTooLong, match="prompt 1 has .* tokens but only 120 fit"):
        generate(model, tokenizer, ["short", long_prompt], gen_config(tiny_base, max_new_tokens=8, truncation="error"))


def test_sampling_filters_apply_top_k_top_p_and_repetition_penalty():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    seen = torch.tensor([[True, False, False, True]])
    cfg = GenerateConfig(model="m", top_k=2)
    assert torch.isinf(process_logits(logits, seen & False, cfg)[0, 2:]).all()
    penalised = process_logits(logits, seen, GenerateConfig(model="m", repetition_penalty=2.0))
    assert penalised.tolist() == [[1.0, 1.0, 0.5, -2.0]]
    nucleus = process_logits(logits, seen & False, GenerateConfig(model="m", top_p=0.6))
    assert torch.isfinite(nucleus).tolist() == [[True, False, False, False]]  # p(top) = 0.61 >= 0.6


def test_the_generate_stage_writes_candidates_and_a_summary(tiny_base, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"version": 1, "prompt": p, "id": f"p{i}"}
                                                      for i, p in enumerate(PROMPTS)])
    result = generate_candidates(gen_config(tiny_base, k=2, batch_size=4), prompts, tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "candidates.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == ["p0", "p1", "p2"]
    assert set(rows[0]["candidates"][0]) == {"text", "token_ids", "tokens", "mean_logprob", "finish_reason"}
    assert result.summary["candidates"] == 6 and result.summary["generated_tokens"] > 0
    assert (tmp_path / "out" / "metrics.jsonl").exists() and (tmp_path / "out" / "stage_config.json").exists()


def test_the_generate_stage_stops_between_batches_when_asked(tiny_base, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"version": 1, "prompt": p} for p in PROMPTS])
    batches = []
    result = generate_candidates(gen_config(tiny_base, k=2, batch_size=2), prompts, tmp_path / "out",
                                 on_log=lambda s, t, m: batches.append(s), should_stop=lambda: len(batches) >= 1)
    assert batches == [2] and result.status == "stopped"
    assert result.summary["prompts_done"] == 1 and result.summary["prompts"] == 3


# --- checkpoint and resume: 3 prompts x k=3 in chunks of 2 jobs = 5 chunks, straddling prompts ---

def run_stage(tiny_base, tmp_path, out: str, stop_after: int | None = None, **overrides):
    """generate_candidates into ``tmp_path/out``; stops once ``stop_after`` chunks were decoded.
    Returns (result, the on_log steps, candidates.jsonl bytes)."""
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        write_jsonl(prompts, [{"version": 1, "prompt": p, "id": f"p{i}"} for i, p in enumerate(PROMPTS)])
    steps: list[int] = []
    result = generate_candidates(gen_config(tiny_base, batch_size=2, **overrides), prompts, tmp_path / out,
                                 on_log=lambda s, t, m: steps.append(s),
                                 should_stop=lambda: stop_after is not None and len(steps) >= stop_after)
    return result, steps, (tmp_path / out / "candidates.jsonl").read_bytes()


def test_a_stopped_generate_stage_resumes_and_writes_the_same_candidates(tiny_base, tmp_path):
    whole, steps, expected = run_stage(tiny_base, tmp_path, "whole")
    assert steps == [2, 4, 6, 8, 9] and whole.summary["resumed_chunks"] == 0
    stopped, steps, _ = run_stage(tiny_base, tmp_path, "out", stop_after=2)
    assert stopped.status == "stopped" and steps == [2, 4]
    resumed, steps, candidates = run_stage(tiny_base, tmp_path, "out")
    assert resumed.status == "completed" and resumed.summary["resumed_chunks"] == 2
    assert steps == [6, 8, 9]  # only the last three chunks decoded; progress counts the resumed ones as done
    assert candidates == expected
    again, steps, candidates = run_stage(tiny_base, tmp_path, "out")  # a finished stage decodes nothing
    assert steps == [] and again.summary["resumed_chunks"] == 5 and candidates == expected


def test_a_checkpoint_of_another_config_or_with_resume_off_is_not_resumed(tiny_base, tmp_path):
    _, _, expected = run_stage(tiny_base, tmp_path, "whole", seed=8)
    run_stage(tiny_base, tmp_path, "out", stop_after=2, seed=7)
    other, steps, candidates = run_stage(tiny_base, tmp_path, "out", seed=8)
    assert steps == [2, 4, 6, 8, 9] and candidates == expected
    assert other.summary["resumed_chunks"] == 0 and other.summary["stale_checkpoint"] is True
    run_stage(tiny_base, tmp_path, "off", stop_after=2, seed=8)
    fresh, steps, candidates = run_stage(tiny_base, tmp_path, "off", seed=8, resume=False)
    assert steps == [2, 4, 6, 8, 9] and candidates == expected and fresh.summary["resumed_chunks"] == 0


def test_a_torn_last_chunk_line_is_ignored_on_resume(tiny_base, tmp_path):
    _, _, expected = run_stage(tiny_base, tmp_path, "out")
    partial = tmp_path / "out" / "checkpoints" / "generate-partial.jsonl"
    lines = partial.read_text().splitlines(keepends=True)
    assert len(lines) == 5 and [json.loads(line)["start"] for line in lines] == [0, 2, 4, 6, 8]
    partial.write_text("".join(lines[:2]) + lines[2][:len(lines[2]) // 2])  # killed while writing chunk 3
    (tmp_path / "out" / "candidates.jsonl").unlink()
    resumed, steps, candidates = run_stage(tiny_base, tmp_path, "out")
    assert resumed.summary["resumed_chunks"] == 2 and steps == [6, 8, 9] and candidates == expected
    assert partial.read_text().splitlines() == [line.rstrip("\n") for line in lines]  # the torn line is gone


def test_the_checkpoint_fingerprint_changes_with_the_model_files_prompts_and_config(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"old weights")
    records = [PPOPrompt("Hi", "p0")]
    cfg = GenerateConfig(model=str(model))
    stamp = fingerprint(cfg, records)
    assert fingerprint(GenerateConfig(model=str(model), resume=False, device="cpu"), records) == stamp
    assert fingerprint(GenerateConfig(model=str(model), k=5), records) != stamp
    assert fingerprint(cfg, [PPOPrompt("Hello", "p0")]) != stamp
    (model / "model.safetensors").write_bytes(b"retrained weights")
    assert fingerprint(cfg, records) != stamp


# --- stop rules: a response ends where the prompt format starts another turn ---

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@contextlib.contextmanager
def scripted(model, ids: list[int]):
    """Make greedy decoding emit exactly ``ids`` (then the last one again), one per forward pass."""
    original, step = model.lm_head.forward, {"n": 0}

    def forward(hidden):
        logits = original(hidden)
        target = ids[min(step["n"], len(ids) - 1)]
        step["n"] += 1
        forced = torch.full_like(logits[..., -1:, :], -1e4)
        forced[..., target] = 1e4
        return torch.cat([logits[..., :-1, :], forced], dim=-2)

    model.lm_head.forward = forward
    try:
        yield
    finally:
        model.lm_head.forward = original


def test_a_plain_format_response_stops_before_it_invents_the_next_turn(lm, tiny_base):
    model, tokenizer = lm
    script = tokenizer("Sure, here it is.\n\nHuman: and now a made-up question", add_special_tokens=False)["input_ids"]
    with scripted(model, script):
        stopped = generate(model, tokenizer, ["Hi"], gen_config(tiny_base, k=1, temperature=0, max_new_tokens=30))
    with scripted(model, script):
        free = generate(model, tokenizer, ["Hi"], gen_config(tiny_base, k=1, temperature=0, max_new_tokens=30,
                                                              stop_at_turn_end=False))
    assert (stopped[0][0]["finish_reason"], stopped[0][0]["text"]) == ("stop", "Sure, here it is.\n")
    assert "Human:" in free[0][0]["text"] and free[0][0]["finish_reason"] == "length"


def test_the_stop_rules_come_from_the_prompt_format(lm, tiny_base):
    from training.generate import PLAIN_TURN_MARKERS, stop_rules

    _, tokenizer = lm
    plain = stop_rules(tokenizer, gen_config(tiny_base, stop=["###"]))
    assert plain.texts == ("###", *PLAIN_TURN_MARKERS) and plain.token_ids == {tokenizer.eos_token_id}
    assert stop_rules(tokenizer, gen_config(tiny_base, stop_at_turn_end=False)).texts == ()


@pytest.fixture
def chatml_lm(tiny_base):
    """The tiny model with ChatML's special turn tokens and template, as SmolLM2-Instruct has."""
    model, tokenizer = load_causal_lm(tiny_base), load_tokenizer(tiny_base)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def test_a_chat_template_response_stops_at_the_templates_end_of_turn_token(chatml_lm, tiny_base):
    from training.generate import stop_rules

    model, tokenizer = chatml_lm
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    rules = stop_rules(tokenizer, gen_config(tiny_base, chat_template=True))
    assert {start, end} <= rules.token_ids and "<|im_end|>" in rules.texts[0]
    script = tokenizer("Hello there", add_special_tokens=False)["input_ids"] + [end, start] + \
        tokenizer("user\nmore", add_special_tokens=False)["input_ids"]
    with scripted(model, script):
        done = generate(model, tokenizer, [[{"role": "user", "content": "Hi"}]],
                        gen_config(tiny_base, k=1, temperature=0, max_new_tokens=20, chat_template=True))[0][0]
    assert (done["finish_reason"], done["text"], done["token_ids"][-1]) == ("stop", "Hello there", end)
