"""Comparing policies on held-out prompts: what a round reports when it ends, and what the benchmarks use
to show learning. A rising training reward alone proves nothing (a policy can learn to please its own
reward model), so every policy is also scored by an independent judge where one is given, next to its KL
to the reference policy, its length and how often it ends properly.

Every policy answers every prompt ``samples`` times, with the same per-prompt seeds (common random
numbers), so the paired differences between two policies are free of the prompt-to-prompt variance; a
prompt's score is the mean over its samples, and standard errors are over prompts.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from training.config import EvaluateConfig, GenerateConfig
from training.data import read_ppo_prompts, write_jsonl
from training.encoding import encode_prompt, fit_prompt
from training.generate import generate
from training.models import context_length, load_causal_lm, load_tokenizer
from training.reporting import OnLog, Reporter, ShouldStop, StageResult, never_stop, no_log
from training.runtime import init_runtime

SAMPLES_FILE = "samples.jsonl"


# --- statistics -----------------------------------------------------------------------------------------

def mean_stderr(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / √n; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """a against b on the same prompts: the mean difference a − b with its standard error, and the share
    of prompts where a scores higher (a tie counts a half)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    diff, stderr = mean_stderr(diffs)
    wins = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diffs) / len(diffs)
    return {"diff": diff, "diff_stderr": stderr, "win_rate": wins}


# --- sampling, KL and scoring -----------------------------------------------------------------------------

@torch.no_grad()
def sequence_logprob_sums(model, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[float]:
    """log π(response | prompt), summed over the response tokens, for each pair (one forward each)."""
    device = next(model.parameters()).device
    sums = []
    for prompt, response in zip(prompt_ids, response_ids, strict=True):
        if not response:
            sums.append(0.0)
            continue
        ids = torch.tensor([prompt + response], device=device)
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
        picked = logits.log_softmax(-1).gather(1, torch.tensor(response, device=device)[:, None])
        sums.append(float(picked.sum()))
    return sums


def score(model_dir: str, prompts: list, responses: list[str], config: EvaluateConfig, device) -> list[float]:
    from training.reward import RewardModel, score_pairs

    model = RewardModel.from_pretrained(model_dir, device)
    tokenizer = load_tokenizer(model_dir)
    values = score_pairs(model, tokenizer, list(zip(prompts, responses, strict=True)),
                         max_length=config.max_length, batch_size=config.batch_size)
    del model
    return values


def evaluate_policies(config: EvaluateConfig, prompts: Path, out: Path, *, on_log: OnLog = no_log,
                      should_stop: ShouldStop = never_stop) -> StageResult:
    """Sample each policy on the first ``max_prompts`` prompts of the PPO-prompt file ``prompts``, then
    score the samples. Writes ``out/samples.jsonl`` (every prompt with each policy's list of samples and scores)
    and a summary with, per policy, ``{name}/rm``, ``/rm_stderr``, ``/judge``, ``/judge_stderr``,
    ``/kl`` (nats per sequence to ``reference``), ``/length`` (tokens), ``/eos_rate`` (ended with EOS) and
    ``/ended_rate`` (EOS or a stop rule), and for each policy against ``baseline``, then for every two other
    policies (``comparisons``), ``{name}_vs_{other}/{rm|judge}_{diff|diff_stderr|win_rate}``."""
    out = Path(out)
    rt = init_runtime(config.device)
    records = read_ppo_prompts(prompts)[:config.max_prompts]
    texts = [r.prompt for r in records]
    reporter = Reporter(out, "evaluate", config, on_log, main=rt.is_main)
    steps = len(config.policies) + bool(config.reward_model) + bool(config.judge)
    groups: dict[str, list[list[dict]]] = {}  # policy → prompt → its samples
    reference = load_causal_lm(config.reference, rt.device).eval() if config.reference else None
    started = time.perf_counter()
    for step, (name, path) in enumerate(zip(config.names, config.policies, strict=True), start=1):
        if should_stop():
            return reporter.finish("stopped", step - 1, {})
        tokenizer, model = load_tokenizer(path), load_causal_lm(path, rt.device)
        settings = {k: getattr(config, k) for k in ("max_new_tokens", "temperature", "top_p", "stop_at_turn_end",
                                                     "chat_template", "batch_size", "seed")}
        groups[name] = generate(model, tokenizer, texts, GenerateConfig(model=path, k=config.samples,
                                                                        device=config.device, resume=False, **settings))
        if reference is not None:
            budget = context_length(model) - config.max_new_tokens
            prompt_ids = [fit_prompt(encode_prompt(tokenizer, p, chat_template=config.chat_template), budget, "left")
                          for p in texts]
            every = [(i, c) for i, group in enumerate(groups[name]) for c in group]
            ref_sums = sequence_logprob_sums(reference, [prompt_ids[i] for i, _ in every],
                                             [c["token_ids"] for _, c in every])
            for (_, c), ref in zip(every, ref_sums, strict=True):
                c["kl"] = c["mean_logprob"] * c["tokens"] - ref
        del model
        reporter.log(step, steps, {"evaluate/seconds": time.perf_counter() - started})
    summary: dict[str, float] = {"prompts": len(records), "samples_per_prompt": config.samples}
    for judge_name, model_dir in (("rm", config.reward_model), ("judge", config.judge)):
        if not model_dir:
            continue
        every = [(texts[i], c) for group_list in groups.values() for i, group in enumerate(group_list)
                 for c in group]  # one load of the RM for all
        values = score(model_dir, [t for t, _ in every], [c["text"] for _, c in every], config, rt.device)
        for (_, c), value in zip(every, values, strict=True):
            c[judge_name] = value
        step += 1
        reporter.log(step, steps, {"evaluate/seconds": time.perf_counter() - started})
    for name, group_list in groups.items():
        summary.update(policy_summary(name, group_list))
    for name, other in comparisons(config.names, config.baseline):
        for judge_name in ("rm", "judge"):
            if judge_name in groups[name][0][0]:
                pair = paired(prompt_means(groups[name], judge_name), prompt_means(groups[other], judge_name))
                summary.update({f"{name}_vs_{other}/{judge_name}_{k}": v for k, v in pair.items()})
    if rt.is_main:
        write_jsonl(out / SAMPLES_FILE, ({"prompt": p, **{n: [{k: v for k, v in c.items() if k != "token_ids"}
                                                              for c in groups[n][i]] for n in groups}}
                                         for i, p in enumerate(texts)))
    return reporter.finish("completed", steps, summary)  # the summary, not a chart point: one value each


def comparisons(names: list[str], baseline: str) -> list[tuple[str, str]]:
    """The paired comparisons a summary reports: every policy against ``baseline``, then every other two
    policies directly, the one listed first against the later one (e.g. a round's new policy against the
    previous one: the difference of their two differences from the baseline has a wider standard error)."""
    if not baseline:
        return []
    others = [name for name in names if name != baseline]
    return [(name, baseline) for name in others] + [
        (a, b) for i, a in enumerate(others) for b in others[i + 1:]]


def prompt_means(groups: list[list[dict]], key: str) -> list[float]:
    """Each prompt's mean of ``key`` over its samples."""
    return [sum(c[key] for c in group) / len(group) for group in groups]


def policy_summary(name: str, groups: list[list[dict]]) -> dict[str, float]:
    """Per policy: the mean RM/judge score with its standard error over prompts (each prompt's samples
    averaged first), the mean KL, length and end rates over every sample."""
    summary = {}
    candidates = [c for group in groups for c in group]
    for key in ("rm", "judge"):
        if key in candidates[0]:
            summary[f"{name}/{key}"], summary[f"{name}/{key}_stderr"] = mean_stderr(prompt_means(groups, key))
    if "kl" in candidates[0]:
        summary[f"{name}/kl"] = mean_stderr([c["kl"] for c in candidates])[0]
    n = len(candidates)
    summary[f"{name}/length"] = sum(c["tokens"] for c in candidates) / n
    summary[f"{name}/eos_rate"] = sum(c["finish_reason"] == "eos" for c in candidates) / n
    summary[f"{name}/ended_rate"] = sum(c["finish_reason"] in ("eos", "stop") for c in candidates) / n
    return summary
