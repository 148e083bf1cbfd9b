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
    lora_targets: str = ""          # modules LoRA adapts: "" = peft's default for the architecture (Llama: the
                                    # q and v projections), "all-linear" = every linear layer of the
                                    # transformer, or comma-separated module names ("q_proj,k_proj,v_proj")

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
        self._check(not self.lora_targets or all(name.strip() for name in self.lora_targets.split(",")),
                    "lora_targets must be empty, 'all-linear' or comma-separated module names")


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
    best_ranked: bool = False       # also train on each ranking's best response (rejection-sampling
                                    # fine-tuning): needs the rankings file
    learning_rate: float = 5e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(bool(self.base), "base (model path or hub id) is required")


POOLINGS = ("last", "mean")


@dataclass
class RewardConfig(TrainConfig):
    """Reward model: a scalar head on a causal LM's last hidden state, InstructGPT k-way loss.
    ``batch_size`` counts ranking examples (prompts), each bringing its k responses."""

    base: str = ""
    chat_template: bool = False
    group_by_length: bool = True
    normalize: bool = True          # shift the bias so demonstrations score mean 0 (InstructGPT)
    train_layers: int = 0           # > 0: train only the top n transformer layers (all their weights) and
                                    # the head; the frozen layers below run once per sequence, cached
    head_only: bool = False         # train only the head (and the final norm) on the frozen transformer's
                                    # output, computed once per sequence and cached: a regularised probe
    pooling: str = "last"           # what the head reads: "last" (the last token's state) or "mean" (the
                                    # mean state over the response's tokens, end-of-turn marker included)
    batch_size: int = 4
    learning_rate: float = 2e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(bool(self.base), "base (model path or hub id) is required")
        self._check(self.train_layers >= 0, "train_layers must be >= 0 (0 = every layer)")
        self._check(not (self.train_layers and self.lora), "train_layers and lora are exclusive")
        self._check(self.pooling in POOLINGS, f"pooling must be one of {', '.join(POOLINGS)}")
        self._check(not (self.head_only and (self.lora or self.train_layers)),
                    "head_only trains no transformer layer: it excludes lora and train_layers")

    @property
    def cached_layers(self) -> int | None:
        """The top layers that train on cached frozen-layer states (0: the head alone), or None when every
        layer runs at every step."""
        return self.train_layers if self.train_layers else 0 if self.head_only else None


DPO_LOSSES = ("listwise", "pairwise")


@dataclass
class DPOConfig(TrainConfig):
    """DPO straight from k-way rankings (the reward model's data), with no reward model: the implicit
    reward β·log(π/π_ref) is trained to rank each ranking's responses. ``batch_size`` counts rankings."""

    base: str = ""                  # the SFT model: initialises the policy and, frozen, is the reference
    chat_template: bool = False
    group_by_length: bool = True
    beta: float = 0.1               # β: how far the policy may move from the reference (DPO's temperature)
    loss: Literal["listwise", "pairwise"] = "listwise"  # Plackett–Luce over the whole ranking (ties grouped),
                                    # or the mean −log σ(r_better − r_worse) over its non-tied pairs
    batch_size: int = 4
    learning_rate: float = 5e-6     # DPO moves a policy far per step: an order below SFT's

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(bool(self.base), "base (the SFT model path) is required")
        self._check(self.beta > 0, "beta must be > 0")
        self._check(self.loss in DPO_LOSSES, f"loss must be one of {DPO_LOSSES}")


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
    stop_at_turn_end: bool = True   # also stop where the prompt format starts another turn: the plain
                                    # format's role markers ("\nHuman:"), the chat template's turn tokens
    batch_size: int = 16            # sequences decoded together (KV cache)
    seed: int = 0
    truncation: Literal["left", "error"] = "left"
    chat_template: bool = False
    resume: bool = True             # continue a partial run of the same config and prompts (out/checkpoints/)
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


@dataclass
class EvaluateConfig(StageConfig):
    """Compare policies on held-out prompts: ``samples`` samples each per prompt (the same seeds for every
    policy), scored by the training reward model and, when given, an independent judge that training never saw,
    with the KL to a reference policy, the response length and the share that end properly."""

    policies: list[str] = field(default_factory=list)  # model directories, in the order reported
    names: list[str] = field(default_factory=list)     # a label per policy, e.g. ["ppo", "sft"]
    baseline: str = ""              # the name every other policy is paired against (e.g. "sft")
    reference: str = ""             # KL(π ‖ reference) in nats per sequence; usually the SFT model
    reward_model: str = ""          # the RM that training optimised
    judge: str = ""                 # an independent RM, never used in training (optional)
    max_prompts: int = 200          # held-out prompts evaluated (the first ones of the file)
    samples: int = 1                # samples per prompt and policy; a prompt's score is their mean, so the
                                    # standard errors and paired differences are over prompts
    max_new_tokens: int = 64
    temperature: float = 1.0        # 1 and top_p 1: samples from π itself, so the KL estimate is unbiased
    top_p: float = 1.0
    stop_at_turn_end: bool = True
    chat_template: bool = False
    batch_size: int = 16
    max_length: int = 512           # tokens the reward models read per (prompt, response)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        self.policies, self.names = list(self.policies), list(self.names)
        self._check(bool(self.policies) and len(self.policies) == len(self.names),
                    "give one name per policy, and at least one policy")
        self._check(len(set(self.names)) == len(self.names), "policy names must differ")
        self._check(not self.baseline or self.baseline in self.names, "baseline must be one of the names")
        self._check(bool(self.reward_model) or bool(self.judge), "a reward model or a judge is required")
        self._check(self.max_prompts >= 1 and self.batch_size >= 1 and self.max_new_tokens >= 1
                    and self.samples >= 1, "max_prompts, samples, batch_size and max_new_tokens must be >= 1")
        self._check(self.temperature >= 0 and 0 < self.top_p <= 1, "temperature >= 0 and top_p in (0, 1]")


@dataclass
class PPOConfig(StageConfig):
    """PPO against a reward model under a per-token KL penalty to the SFT policy (InstructGPT, after
    Ziegler et al. 2019 and Stiennon et al. 2020). One iteration = one rollout of ``batch_size`` prompts
    followed by ``ppo_epochs`` passes over it in minibatches."""

    policy: str = ""                # the SFT model: initialises the actor; a frozen copy is the reference
    reward_model: str = ""          # a training.reward model dir; also initialises the critic. "" needs a reward_fn
    seed: int = 0
    iterations: int = 100
    batch_size: int = 16            # prompts per rollout (per process)
    minibatch_size: int = 8
    ppo_epochs: int = 4
    learning_rate: float = 1e-5     # actor
    critic_learning_rate: float = 5e-5
    critic_train_layers: int = 0    # > 0: the critic trains only its top n layers and head (the rest frozen:
                                    # no backward through them), 0 = all
    adam_betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0      # 0 disables clipping
    # Rollout (sampling); log-probs for training use logits / temperature.
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_prompt_length: int = 256    # longer prompts are cut from the left, or rejected (truncation="error")
    truncation: Literal["left", "error"] = "left"
    chat_template: bool = False
    stop: list[str] = field(default_factory=list)  # as GenerateConfig: rollouts end as candidates do
    stop_at_turn_end: bool = True
    # Rewards.
    kl_coef: float = 0.05           # β in r_t = −β (log π − log π_ref); the initial β when adaptive
    adaptive_kl: bool = False       # Ziegler et al.'s proportional controller towards kl_target
    kl_target: float = 6.0          # nats per sequence
    kl_horizon: int = 10000         # rollouts (sequences) over which β moves
    score_clip: float = 0.0         # clip RM scores to [−c, c]; 0 = off
    missing_eos_penalty: float = 0.0  # subtracted from the score of responses that hit max_new_tokens without EOS
    # Advantages and losses.
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    cliprange: float = 0.2          # ε of the clipped surrogate
    cliprange_value: float = 0.2    # ε_v of the clipped value loss
    vf_coef: float = 1.0            # weight of the value loss (the critic has its own optimizer)
    entropy_coef: float = 0.0       # entropy bonus
    ptx_coef: float = 0.0           # γ_ptx: weight of the LM loss on SFT/pretraining batches (PPO-ptx)
    ptx_batch_size: int = 4
    ema_decay: float = 0.0          # > 0 keeps an EMA of the actor weights and saves it as the policy
    lora: bool = False              # LoRA actor; the reference is the same weights with the adapter disabled
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: str = ""          # modules LoRA adapts: "" = peft's default for the architecture (Llama: the
                                    # q and v projections), "all-linear" = every linear layer of the
                                    # transformer, or comma-separated module names ("q_proj,k_proj,v_proj")
    # Bookkeeping.
    sample_every: int = 10          # iterations between sample-response tables (samples.jsonl)
    # Held-out evaluation (with train_ppo's eval_data): the training RM's score, the judge's, KL to the
    # reference, length and EOS rate on the same prompts and seeds, before training, every eval_every
    # iterations and at the end: a rising training reward alone shows nothing.
    eval_every: int = 0             # 0: before training and at the end only
    eval_prompts: int = 32          # the first ones of eval_data
    judge: str = ""                 # an independent training.reward model dir, never trained on (optional)
    checkpoint_every: int = 10      # iterations between resumable checkpoints
    resume: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        self._check(bool(self.policy), "policy (the SFT model path) is required")
        self._check(self.iterations >= 1 and self.ppo_epochs >= 1, "iterations and ppo_epochs must be >= 1")
        self._check(1 <= self.minibatch_size <= self.batch_size, "minibatch_size must be in [1, batch_size]")
        self._check(self.learning_rate > 0 and self.critic_learning_rate > 0, "learning rates must be > 0")
        self._check(self.critic_train_layers >= 0, "critic_train_layers must be >= 0 (0 = every layer)")
        self._check(self.max_new_tokens >= 1 and self.max_prompt_length >= 1, "lengths must be >= 1")
        self._check(self.temperature > 0, "temperature must be > 0 (PPO samples)")
        self.stop = list(self.stop)
        self._check(self.eval_every >= 0 and self.eval_prompts >= 1, "eval_every >= 0 and eval_prompts >= 1")
        self._check(0 < self.top_p <= 1 and self.top_k >= 0, "top_p must be in (0, 1] and top_k >= 0")
        self._check(self.truncation in TRUNCATION, f"truncation must be one of {TRUNCATION}")
        self._check(self.kl_coef >= 0 and self.kl_target > 0 and self.kl_horizon > 0, "bad KL settings")
        self._check(self.score_clip >= 0 and self.missing_eos_penalty >= 0, "score_clip and penalty must be >= 0")
        self._check(0 < self.gamma <= 1 and 0 <= self.lam <= 1, "gamma must be in (0, 1] and lam in [0, 1]")
        self._check(self.cliprange > 0 and self.cliprange_value > 0, "clip ranges must be > 0")
        self._check(self.vf_coef > 0 and self.entropy_coef >= 0 and self.ptx_coef >= 0, "bad loss weights")
        self._check(0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)")
        self._check(self.sample_every >= 1 and self.checkpoint_every >= 1, "sample/checkpoint_every must be >= 1")


RLOO_LOSSES = ("clipped", "plain")
KL_PENALTIES = ("sequence", "token")


@dataclass
class RLOOConfig(StageConfig):
    """RLOO (REINFORCE leave-one-out: Kool et al. 2019, Ahmadian et al. 2024) against a reward model under a
    KL penalty to the SFT policy, with no critic: each prompt gets k samples, and each sample's baseline is
    the mean reward of the other k − 1. One iteration = one rollout of ``batch_size`` prompts × k samples,
    then ``update_epochs`` passes over it in minibatches. Rollouts are PPO's (same fields, same meaning)."""

    policy: str = ""                # the SFT model: initialises the policy; a frozen copy is the reference
    reward_model: str = ""          # a training.reward model dir; "" needs a reward_fn
    seed: int = 0
    iterations: int = 100
    batch_size: int = 8             # prompts per rollout (per process)
    k: int = 4                      # samples per prompt (>= 2: a sample's baseline is the others' mean)
    minibatch_size: int = 16        # sequences per optimizer step
    update_epochs: int = 2          # passes over each rollout
    loss: Literal["clipped", "plain"] = "clipped"  # PPO's clipped surrogate, or the plain policy gradient
                                    # −A·π/π_old (REINFORCE's gradient, importance-weighted after the first step)
    cliprange: float = 0.2          # ε of the clipped surrogate
    learning_rate: float = 1e-5
    adam_betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0      # 0 disables clipping
    # Rollout (sampling), as PPOConfig: rollouts end as candidates do.
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_prompt_length: int = 256
    truncation: Literal["left", "error"] = "left"
    chat_template: bool = False
    stop: list[str] = field(default_factory=list)
    stop_at_turn_end: bool = True
    # Rewards.
    kl_coef: float = 0.05           # β of the KL penalty; the initial β when adaptive
    kl_penalty: Literal["sequence", "token"] = "sequence"  # sequence: every token's advantage is the whole
                                    # return's; token: a token's return counts only the KL from it onwards
    adaptive_kl: bool = False       # Ziegler et al.'s controller towards kl_target (training.kl)
    kl_target: float = 6.0          # nats per sequence
    kl_horizon: int = 10000
    score_clip: float = 0.0         # clip scores to [−c, c]; 0 = off
    missing_eos_penalty: float = 0.0  # subtracted from the score of responses that hit max_new_tokens
    lora: bool = False              # LoRA policy; the reference is the same weights with the adapter disabled
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: str = ""          # modules LoRA adapts: "" = peft's default for the architecture (Llama: the
                                    # q and v projections), "all-linear" = every linear layer of the
                                    # transformer, or comma-separated module names ("q_proj,k_proj,v_proj")
    # Bookkeeping and held-out evaluation, as PPOConfig.
    sample_every: int = 10
    eval_every: int = 0
    eval_prompts: int = 32
    judge: str = ""
    checkpoint_every: int = 10
    resume: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        self.stop = list(self.stop)
        self._check(bool(self.policy), "policy (the SFT model path) is required")
        self._check(self.k >= 2, "k must be >= 2 (a sample's baseline is the mean of the other k - 1)")
        self._check(self.iterations >= 1 and self.update_epochs >= 1 and self.batch_size >= 1,
                    "iterations, update_epochs and batch_size must be >= 1")
        self._check(1 <= self.minibatch_size <= self.batch_size * self.k,
                    "minibatch_size must be in [1, batch_size * k]")
        self._check(self.loss in RLOO_LOSSES, f"loss must be one of {RLOO_LOSSES}")
        self._check(self.kl_penalty in KL_PENALTIES, f"kl_penalty must be one of {KL_PENALTIES}")
        self._check(self.learning_rate > 0 and self.cliprange > 0, "learning_rate and cliprange must be > 0")
        self._check(self.max_new_tokens >= 1 and self.max_prompt_length >= 1, "lengths must be >= 1")
        self._check(self.temperature > 0, "temperature must be > 0 (RLOO samples)")
        self._check(0 < self.top_p <= 1 and self.top_k >= 0, "top_p must be in (0, 1] and top_k >= 0")
        self._check(self.truncation in TRUNCATION, f"truncation must be one of {TRUNCATION}")
        self._check(self.kl_coef >= 0 and self.kl_target > 0 and self.kl_horizon > 0, "bad KL settings")
        self._check(self.score_clip >= 0 and self.missing_eos_penalty >= 0, "score_clip and penalty must be >= 0")
        self._check(self.eval_every >= 0 and self.eval_prompts >= 1, "eval_every >= 0 and eval_prompts >= 1")
        self._check(self.sample_every >= 1 and self.checkpoint_every >= 1, "sample/checkpoint_every must be >= 1")
