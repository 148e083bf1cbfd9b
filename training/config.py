"""One typed config dataclass per stage. Each validates itself and round-trips through JSON.

No torch here: the platform builds and validates configs in the web process.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

C = TypeVar("C", bound="StageConfig")

TRUNCATION = ("left", "error")


class ConfigError(ValueError):
    """A config field has a value the stage cannot run with."""


@dataclass
class StageConfig:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls: type[C], text_or_path: str | Path) -> C:
        text = Path(text_or_path).read_text() if isinstance(text_or_path, Path) else text_or_path
        return cls.from_dict(json.loads(text))

    def _check(self, ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"{type(self).__name__}: {message}")


@dataclass
class TrainConfig(StageConfig):
    """Optimisation settings shared by every training stage."""

    seed: int = 0                   # seeds torch/python RNGs, the data order and the train/held-out split
    learning_rate: float = 1e-4     # peak AdamW learning rate, reached after warmup
    weight_decay: float = 0.0       # AdamW decay on matrices (never on biases or norms)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 10          # linear warmup, then cosine decay to min_lr_ratio * learning_rate
    min_lr_ratio: float = 0.1
    epochs: float = 1.0             # used when max_steps is 0
    max_steps: int = 0              # optimizer steps; 0 = derived from epochs
    batch_size: int = 8             # examples per micro-batch per process
    grad_accum: int = 1             # micro-batches per optimizer step
    max_grad_norm: float = 1.0      # 0 disables clipping
    max_length: int = 512           # tokens per sequence (prompt is cut from the left first)
    truncation: Literal["left", "error"] = "left"  # over-long prompt: cut its start, or reject the record
    eval_fraction: float = 0.05     # held-out share when no eval file is given (split by record hash)
    eval_every: int = 0             # optimizer steps between evals; 0 = only at the end
    checkpoint_every: int = 0       # optimizer steps between resumable checkpoints; 0 = only on stop/end
    log_every: int = 10
    resume: bool = True             # continue from out/checkpoints/last.pt when it exists
    device: str = "auto"            # "auto" (cuda:LOCAL_RANK if available, else cpu), "cpu", "cuda"
    lora: bool = False              # train LoRA adapters (peft) instead of all weights
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)  # JSON gives a list
        self._check(self.learning_rate > 0, "learning_rate must be > 0")
        self._check(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1")
        self._check(self.max_steps >= 0 and self.epochs > 0, "max_steps must be >= 0 and epochs > 0")
        self._check(self.max_length >= 8, "max_length must be >= 8")
        self._check(self.truncation in TRUNCATION, f"truncation must be one of {TRUNCATION}")
        self._check(0 <= self.eval_fraction < 1, "eval_fraction must be in [0, 1)")
        self._check(self.warmup_steps >= 0 and 0 <= self.min_lr_ratio <= 1, "bad warmup_steps/min_lr_ratio")
        self._check(self.log_every >= 1, "log_every must be >= 1")


@dataclass
class PretrainConfig(TrainConfig):
    """Language-model pretraining on plain text. With ``base`` empty, a new byte-level BPE tokenizer
    is trained on the corpus and a GPT-2-style model is built from the size fields below."""

    base: str = ""                  # existing model to continue; "" = build a new one
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 192
    n_positions: int = 512
    dropout: float = 0.0
    block_size: int = 256           # tokens per training sequence (documents are packed, EOS-separated)
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # float16 halves the shipped size
    learning_rate: float = 1e-3
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(self.n_embd % self.n_head == 0, "n_embd must be divisible by n_head")
        self._check(8 <= self.block_size <= self.n_positions, "block_size must be in [8, n_positions]")
        self._check(self.vocab_size >= 300, "vocab_size must be >= 300 (256 bytes + merges + specials)")


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning: causal-LM loss on response tokens only."""

    base: str = ""                  # model directory or hub id (hub only when online)
    chat_template: bool = False     # render prompts with the tokenizer's chat template, else the plain format
    group_by_length: bool = True    # batch similar lengths together (padding never mixes examples)
    learning_rate: float = 5e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(bool(self.base), "base (model path or hub id) is required")


@dataclass
class RewardConfig(TrainConfig):
    """Reward model: a scalar head on a causal LM's last hidden state, InstructGPT k-way loss.
    ``batch_size`` counts ranking examples (prompts), each bringing its k responses."""

    base: str = ""
    chat_template: bool = False
    group_by_length: bool = True
    normalize: bool = True          # shift the bias so demonstrations score mean 0 (InstructGPT)
    batch_size: int = 4
    learning_rate: float = 2e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(bool(self.base), "base (model path or hub id) is required")


@dataclass
class GenerateConfig(StageConfig):
    """Sampling k candidates per prompt."""

    model: str = ""                 # model directory or hub id
    k: int = 4                      # candidates per prompt
    temperature: float = 1.0        # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                  # 0 = off
    max_new_tokens: int = 64
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or output (CTRL)
    stop: list[str] = field(default_factory=list)  # cut the text at the first of these; finish_reason "stop"
    batch_size: int = 16            # sequences decoded together (KV cache)
    seed: int = 0
    truncation: Literal["left", "error"] = "left"
    chat_template: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        self._check(bool(self.model), "model (path or hub id) is required")
        self._check(self.k >= 1 and self.batch_size >= 1, "k and batch_size must be >= 1")
        self._check(self.temperature >= 0, "temperature must be >= 0")
        self._check(0 < self.top_p <= 1, "top_p must be in (0, 1]")
        self._check(self.top_k >= 0 and self.max_new_tokens >= 1, "top_k >= 0 and max_new_tokens >= 1")
        self._check(self.repetition_penalty > 0, "repetition_penalty must be > 0")
        self._check(self.truncation in TRUNCATION, f"truncation must be one of {TRUNCATION}")
        self.stop = list(self.stop)
        self._check(all(isinstance(s, str) and s for s in self.stop), "stop sequences must be non-empty strings")
