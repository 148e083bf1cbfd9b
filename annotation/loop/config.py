"""Round presets and their validation. A round's config is one preset, a path, and per-stage overrides:

    {"preset": "cpu", "path": "rloo", "sft": {"max_steps": 100}, "generate": {"prompts": 40}}

The path says how the round turns its labels into a policy (``PATHS``): InstructGPT's SFT → RM → PPO (the
default), SFT → RM → RLOO (no critic), or SFT → DPO (no reward model: the policy trains on the rankings).

Each stage's settings are the fields of the training library's config dataclass for that stage
(``training.config``), less the model paths, which the round fills in from the lineage. ``generate``
adds settings of the platform's: how many next-round prompts get candidates, and from which models.
``sft`` adds two (``SFT_INIT``, ``SFT_DATA``): which model a round's SFT starts from, and whether it trains
on the whole snapshot or only on what earlier rounds' snapshots did not hold.

Importing this module never imports torch: ``training.config`` is plain dataclasses, so the web process
validates a round's config when it is submitted, long before a worker runs it.
"""
from __future__ import annotations

import copy
from typing import Any, TypedDict

from rest_framework.exceptions import ValidationError

from training.config import (
    DPOConfig,
    EvaluateConfig,
    GenerateConfig,
    PPOConfig,
    RewardConfig,
    RLOOConfig,
    SFTConfig,
)

STAGES = ("sft", "rm", "ppo", "rloo", "dpo", "evaluate", "generate")
# A round's path: the stages that train its policy, in order. Every path then evaluates the policy on
# held-out prompts against SFT and the previous policy, and generates the next round's candidates.
PATHS: dict[str, tuple[str, ...]] = {
    "ppo": ("sft", "rm", "ppo"),    # InstructGPT: a reward model, then PPO against it with a critic
    "rloo": ("sft", "rm", "rloo"),  # the same reward model, REINFORCE with a leave-one-out baseline: no critic
    "dpo": ("sft", "dpo"),          # no reward model: DPO on the rankings, the round's SFT model as reference
}
DEFAULT_PATH = "ppo"
# Where a round's SFT starts (``sft.init``). From round 2 on, "policy" continues from the best model so far
# (Llama 2's iterated rejection-sampling fine-tuning); "sft" continued from the last SFT model, which threw
# the round's RL away (docs/benchmarks.md, "Second run, round 2": round 2's SFT scored below round 1's policy).
SFT_INIT = {
    "policy": "the project's active policy, else its latest SFT model, else the base",
    "sft": "the project's latest SFT model, else the base",
    "base": "the project's base model",
}
# What a round's SFT trains on (``sft.data``): "new" = the demonstrations, and with ``best_ranked`` the
# best-ranked candidates of the rankings, that no earlier round's snapshot held; "all" = the whole snapshot.
# A model that already trained on the old examples would only overfit them again.
SFT_DATA = {
    "new": "only labels that no earlier round's snapshot held",
    "all": "the whole snapshot",
}


class RoundConfig(TypedDict):
    """What a round stores in ``Round.config``: the preset it came from and each stage's settings."""

    preset: str
    gate: bool
    path: str
    sft: dict[str, Any]
    rm: dict[str, Any]
    ppo: dict[str, Any]
    rloo: dict[str, Any]
    dpo: dict[str, Any]
    evaluate: dict[str, Any]
    generate: dict[str, Any]


# Named presets (after nanoGPT's config/ files): every number says why it was chosen.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The offline tiny base (2.66M parameters) on a laptop CPU: a whole round takes minutes. For tests and
    # quick mode; the tiny base cannot learn human preferences (its RM stays at chance).
    "tiny": {
        "sft": {
            "init": "sft",            # the tiny base learns nothing from one round's policy, and a tiny round
            "data": "all",            # has no best-ranked examples: each round's SFT continues the last one
                                      # on the whole snapshot (the cpu and gpu presets build on the policy)
            "max_steps": 60,          # ~1 epoch of the demo's 300 demonstrations at batch 8, ~1 min on 2 cores
            "batch_size": 8,
            "learning_rate": 3e-4,    # the tiny base is small and under-trained: a high rate moves it
            "warmup_steps": 5,
            "max_length": 256,        # HH prompts plus a reply fit; longer ones are cut from the left
            "log_every": 5,
            "checkpoint_every": 10,   # a killed worker loses at most 10 steps (~10 s) of work
        },
        "rm": {
            "max_steps": 60,          # 240 rankings at batch 4: the demo's labels, once
            "batch_size": 4,
            "learning_rate": 1e-4,
            "warmup_steps": 5,
            "max_length": 256,
            "log_every": 5,
            "checkpoint_every": 10,   # as SFT
        },
        "ppo": {
            "iterations": 12,         # a few minutes of rollouts on a CPU
            "batch_size": 8,          # rollouts per iteration
            "minibatch_size": 4,
            "ppo_epochs": 2,
            "max_prompt_length": 128,
            "learning_rate": 2e-5,    # InstructGPT's order of magnitude for the policy
            "critic_learning_rate": 5e-5,
            "kl_coef": 0.05,          # keeps the policy near SFT while the RM is this weak
            "sample_every": 4,
            "eval_every": 4,          # held-out score, KL, length and EOS rate charted as it trains
            "eval_prompts": 16,
            "checkpoint_every": 4,    # three checkpoints a run: a kill loses at most 4 iterations
        },
        "rloo": {                     # PPO's budget: as many iterations and rollouts, and no critic to train
            "iterations": 12,
            "batch_size": 2,          # prompts per rollout, each sampled k times: PPO's 8 rollouts
            "k": 4,                   # Ahmadian et al.'s k: each sample's baseline is the mean of 3 others
            "minibatch_size": 4,
            "update_epochs": 2,       # as ppo_epochs
            "max_prompt_length": 128,
            "learning_rate": 2e-5,    # PPO's actor rate
            "kl_coef": 0.05,          # as PPO
            "sample_every": 4,
            "eval_every": 4,          # the same held-out charts as PPO's
            "eval_prompts": 16,
            "checkpoint_every": 4,
        },
        "dpo": {                      # the RM's budget: the same rankings, once
            "max_steps": 60,
            "batch_size": 4,          # rankings, each with its k responses
            "learning_rate": 3e-5,    # an order below SFT's, as DPO moves a policy far per step
            "beta": 0.1,              # DPO's usual β: the policy stays near the round's SFT model
            "loss": "listwise",       # the whole ranking (Plackett–Luce, ties grouped), not its pairs
            "warmup_steps": 5,
            "max_length": 256,
            "log_every": 5,
            "checkpoint_every": 10,   # as the RM
        },
        "evaluate": {
            "max_prompts": 100,       # held-out prompts: enough for a standard error near 0.1 of the RM's spread
            "batch_size": 16,
        },
        "generate": {
            "prompts": "auto",        # next-round ranking tasks: "auto" = enough that their comparisons make
                                      # at least a quarter of the RM's data (at least 20), or a number
            "held_out_prompts": "auto",  # test-split prompts that also get candidates, so the RM's held-out
                                         # set grows with the policy's samples: "auto" = up to 200
                                         # held-out comparisons and at least a tenth of the round's prompts
            "models": ["policy"],     # "policy" (the round's, or the one the gate kept), "sft" or both
                                      # (candidates interleaved, k per task)
            "batch_size": 16,         # sequences decoded together with the KV cache
        },
    },
}
# A real pretrained base (SmolLM2-135M-Instruct, 135M parameters) on a 2-core laptop CPU, fp32, with LoRA
# everywhere: one demo round (SFT → RM → PPO → evaluate → generate) in at most 20 minutes. Measured:
# forward ~550 tokens/s, LoRA training ~270 tokens/s, full fine-tuning ~150 tokens/s.
PRESETS["cpu"] = {
    "sft": {
        "lora": True, "lora_r": 16, "lora_alpha": 32,  # rank 16: enough to pick up the demo's style
        "max_steps": 30,          # 120 demonstrations at batch 4 (~30k tokens, ~2 min)
        "best_ranked": True,      # and each ranking's best candidate: each round's SFT starts from the best of
                                  # the last policy's samples (rejection sampling, Llama 2), so gains carry over
        "init": "policy",         # from round 2 on, start from the active policy, the best model so far: from
                                  # the last SFT model, round 2's SFT scored 0.10 below round 1's policy
        "data": "new",            # and train only on what is new since the earlier rounds (new demonstrations,
                                  # the best of the policy's new candidates): the old ones are in it already
        "batch_size": 4,
        "learning_rate": 2e-4,    # LoRA's usual rate; the adapters start at zero
        "warmup_steps": 3,
        "max_length": 256,        # an HH prompt and its reply
        "log_every": 1,
        "checkpoint_every": 10,   # a killed worker loses at most ~40 s
    },
    "rm": {
        "lora": True, "lora_r": 16, "lora_alpha": 32,
        "max_steps": 40,          # 160 rankings at batch 4 (~2.5 min)
        "batch_size": 4,
        "learning_rate": 1e-4,
        "warmup_steps": 4,
        "max_length": 256,
        "log_every": 1,
        "checkpoint_every": 10,
    },
    "ppo": {
        "lora": True, "lora_r": 16, "lora_alpha": 32,  # the reference is the base with the adapter off: no copy
        "iterations": 6,          # 48 rollouts: the budget's largest share (~1 min an iteration)
        "batch_size": 8,
        "minibatch_size": 4,
        "ppo_epochs": 1,          # one pass: more passes cost a full backward each on a CPU
        "max_prompt_length": 192,
        "learning_rate": 5e-5,    # LoRA actor
        "critic_learning_rate": 1e-5,  # the critic is a full copy of the RM: small steps
        "kl_coef": 0.05,
        "sample_every": 2,
        "eval_every": 3,          # held-out evaluation before, halfway and at the end (~30 s each)
        "eval_prompts": 16,
        "checkpoint_every": 2,
    },
    "rloo": {
        "lora": True, "lora_r": 16, "lora_alpha": 32,  # as PPO: the reference is the base with the adapter off
        "iterations": 6,          # PPO's 48 rollouts; with no critic to run and train, an iteration costs less
        "batch_size": 2,          # prompts per rollout × k = 8 samples, PPO's batch
        "k": 4,
        "minibatch_size": 4,
        "update_epochs": 1,       # one pass, as PPO here
        "max_prompt_length": 192,
        "learning_rate": 5e-5,    # LoRA actor, as PPO
        "kl_coef": 0.05,
        "sample_every": 2,
        "eval_every": 3,
        "eval_prompts": 16,
        "checkpoint_every": 2,
    },
    "dpo": {
        "lora": True, "lora_r": 16, "lora_alpha": 32,
        "max_steps": 40,          # the RM's 160 rankings at batch 4; no RM and no rollouts, so the shortest path
        "batch_size": 4,
        "learning_rate": 2e-5,    # an order below SFT's LoRA rate: DPO moves a policy far per step
        "beta": 0.1,
        "loss": "listwise",
        "warmup_steps": 4,
        "max_length": 256,
        "log_every": 1,
        "checkpoint_every": 10,
    },
    "evaluate": {
        "max_prompts": 40,        # held-out prompts × 3 policies: ~3 min; the paired design keeps errors small
        "samples": 2,             # per prompt: one sample a prompt let a noisy comparison decide the gate
        "batch_size": 8,
    },
    "generate": {"prompts": "auto", "held_out_prompts": "auto", "models": ["policy"], "batch_size": 16},
}
# One GPU (tested on none here: this task had no accelerator): full fine-tuning and InstructGPT-sized steps.
PRESETS["gpu"] = {
    # From round 2 on, SFT starts from the active policy and trains on the new labels only (as the cpu preset).
    "sft": {"max_steps": 1000, "batch_size": 16, "learning_rate": 2e-5, "warmup_steps": 50, "max_length": 1024,
            "best_ranked": True, "init": "policy", "data": "new",
            "eval_every": 200, "checkpoint_every": 200, "log_every": 10},
    "rm": {"max_steps": 1000, "batch_size": 16, "learning_rate": 1e-5, "warmup_steps": 50, "max_length": 1024,
           "eval_every": 200, "checkpoint_every": 200, "log_every": 10},
    "ppo": {"iterations": 200, "batch_size": 64, "minibatch_size": 16, "ppo_epochs": 4, "learning_rate": 1e-6,
            "critic_learning_rate": 9e-6, "kl_coef": 0.02, "max_prompt_length": 512, "checkpoint_every": 20,
            "sample_every": 20, "eval_every": 20, "eval_prompts": 256},
    # PPO's rollouts (16 prompts × k 4 = 64 samples) and steps; no critic.
    "rloo": {"iterations": 200, "batch_size": 16, "k": 4, "minibatch_size": 16, "update_epochs": 4,
             "learning_rate": 1e-6, "kl_coef": 0.02, "max_prompt_length": 512, "checkpoint_every": 20,
             "sample_every": 20, "eval_every": 20, "eval_prompts": 256},
    # The RM's steps; full fine-tuning DPO wants a rate far below SFT's (Zephyr's 5e-7).
    "dpo": {"max_steps": 1000, "batch_size": 16, "learning_rate": 5e-7, "warmup_steps": 50, "max_length": 1024,
            "beta": 0.1, "loss": "listwise", "eval_every": 200, "checkpoint_every": 200, "log_every": 10},
    "evaluate": {"max_prompts": 500, "batch_size": 64},
    "generate": {"prompts": "auto", "held_out_prompts": "auto", "models": ["policy"], "batch_size": 64},
}
DEFAULT_PRESET = "cpu"
# On by default: a round whose PPO policy scores below its SFT model on held-out prompts keeps the previous
# active policy (or SFT's) for the next round's candidates, and says why.
DEFAULT_GATE = True

# The project's own settings (Project.max_new_tokens, Project.chat_template): every stage of a round uses
# them, so that PPO rolls out, and the evaluation samples, exactly as candidates are generated.
PROJECT_SETTINGS = ("max_new_tokens", "chat_template")
# Settings of the platform's own, not fields of GenerateConfig.
GENERATE_PLATFORM_FIELDS = ("prompts", "held_out_prompts", "models")
SFT_PLATFORM_FIELDS = ("init", "data")
PLATFORM_FIELDS = {"generate": GENERATE_PLATFORM_FIELDS, "sft": SFT_PLATFORM_FIELDS}
# Fields a round fills in itself: placeholders let the dataclass validate the rest.
_CLASSES = {"sft": (SFTConfig, {"base": "-"}), "rm": (RewardConfig, {"base": "-"}),
            "ppo": (PPOConfig, {"policy": "-"}), "rloo": (RLOOConfig, {"policy": "-"}),
            "dpo": (DPOConfig, {"base": "-"}),
            "evaluate": (EvaluateConfig, {"policies": ["-"], "names": ["-"], "reward_model": "-"}),
            "generate": (GenerateConfig, {"model": "-"})}


def preset(name: str = DEFAULT_PRESET) -> RoundConfig:
    """A copy of the named preset as a full round config."""
    return {"preset": name, "gate": DEFAULT_GATE, "path": DEFAULT_PATH, **copy.deepcopy(PRESETS[name])}


def validate_round_config(overrides: dict | None, *, default_preset: str = DEFAULT_PRESET) -> RoundConfig:
    """The preset named in ``overrides`` (else ``default_preset``, the project's) merged with its path and
    per-stage overrides, each stage checked by building its config dataclass (every stage, whatever the path:
    a round's config stays valid when only its path changes). Raises ValidationError
    {"config": {stage or "path": [message]}} listing every problem at once."""
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ValidationError({"config": ["must be an object of stage → settings"]})
    overrides = dict(overrides)
    name = overrides.pop("preset", default_preset)
    gate = overrides.pop("gate", DEFAULT_GATE)
    path = overrides.pop("path", DEFAULT_PATH)
    if not isinstance(name, str) or name not in PRESETS:
        raise ValidationError({"config": {"preset": [f"unknown preset {name!r}; use {', '.join(PRESETS)}"]}})
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(overrides) - set(STAGES))
    if unknown:
        errors["non_field_errors"] = [f"unknown stage(s): {', '.join(unknown)}; use preset, gate, path, "
                                      f"{', '.join(STAGES)}"]
    merged = preset(name)
    if not isinstance(gate, bool):
        errors["gate"] = ["must be true or false"]
    merged["gate"] = gate
    if not isinstance(path, str) or path not in PATHS:
        errors["path"] = [f"unknown path {path!r}; use " + ", ".join(
            f'"{known}" ({" → ".join(stages)})' for known, stages in PATHS.items())]
    else:
        merged["path"] = path
    for stage, (cls, placeholders) in _CLASSES.items():
        given = overrides.get(stage, {})
        if not isinstance(given, dict):
            errors[stage] = ["must be an object of settings"]
            continue
        for name in sorted(set(given) & set(PROJECT_SETTINGS)):
            errors.setdefault(stage, []).append(
                f"{name} is the project's setting (candidates, PPO rollouts and evaluation share it): "
                "change it on the project")
        merged[stage].update(given)
        fields = {k: v for k, v in merged[stage].items() if k not in PLATFORM_FIELDS.get(stage, ())}
        try:
            cls.from_dict({**fields, **placeholders})
        except (TypeError, ValueError) as exc:
            errors.setdefault(stage, []).append(str(exc))
    for name, choices in (("init", SFT_INIT), ("data", SFT_DATA)):
        value = merged["sft"].get(name)
        if not isinstance(value, str) or value not in choices:
            named = [f'"{known}" ({meaning})' for known, meaning in choices.items()]
            errors.setdefault("sft", []).append(
                f"{name} must be {', '.join(named[:-1])} or {named[-1]}, not {value!r}")
    generate = merged["generate"]
    prompts = generate.get("prompts")
    if prompts != "auto" and (not isinstance(prompts, int) or isinstance(prompts, bool) or prompts < 1):
        errors.setdefault("generate", []).append('prompts must be "auto" or a positive integer')
    held_out = generate.get("held_out_prompts", 0)
    if held_out != "auto" and (not isinstance(held_out, int) or isinstance(held_out, bool) or held_out < 0):
        errors.setdefault("generate", []).append('held_out_prompts must be "auto" or an integer >= 0')
    models = generate.get("models")
    # The path's own name ("ppo" in a PPO round) is another name for the round's policy.
    if not isinstance(models, list) or not models or \
            not all(isinstance(m, str) and m in ("policy", "sft", merged["path"]) for m in models):
        errors.setdefault("generate", []).append(
            f'models must be a non-empty list drawn from "policy" (the round\'s {merged["path"]} policy, or the '
            'one the gate kept) and "sft"')
    if errors:
        raise ValidationError({"config": errors})
    return merged
