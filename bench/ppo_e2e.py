"""Helpers for bench/ppo_end_to_end.sh (issue 5): PPO-prompt files from converted HH-RLHF, and the held-out
evaluation of the SFT and PPO policies under the reward model.

    python bench/ppo_e2e.py prompts --hh var/ppo-e2e/hh --out var/ppo-e2e/prompts
    python bench/ppo_e2e.py eval --sft var/ppo-e2e/sft --ppo var/ppo-e2e/ppo --rm var/ppo-e2e/rm \
        --prompts var/ppo-e2e/prompts/heldout.jsonl --out var/ppo-e2e/eval.json

``prompts`` writes ``train.jsonl`` (unique prompts of rankings.train, for PPO) and ``heldout.jsonl`` (unique
prompts of rankings.heldout, never seen by SFT, RM or PPO; the split is by record hash, so no prompt is on
both sides). ``eval`` samples each policy on the held-out prompts with ``training.ppo.mean_score``'s code
path (the same rollout as training: temperature, max_new_tokens, RM read at the last response token),
once per evaluation seed (default: one), and reports the mean RM score, response length and EOS rate per policy, the
paired difference with its standard error, and ``training.ppo.kl_to_reference`` (PPO policy vs SFT) on the first seed.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from training.data import PPOPrompt, read_ppo_prompts, read_rankings, to_record, write_jsonl


def make_prompts(args: argparse.Namespace) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for side in ("train", "heldout"):
        seen, prompts = set(), []
        for example in read_rankings(args.hh / f"rankings.{side}.jsonl"):
            key = json.dumps(example.prompt, sort_keys=True)
            if key not in seen:
                seen.add(key)
                prompts.append(PPOPrompt(example.prompt, example.id))
        counts[side] = write_jsonl(args.out / f"{side}.jsonl", map(to_record, prompts))
    train = {json.dumps(p.prompt, sort_keys=True) for p in read_ppo_prompts(args.out / "train.jsonl")}
    held = {json.dumps(p.prompt, sort_keys=True) for p in read_ppo_prompts(args.out / "heldout.jsonl")}
    counts["overlap"] = len(train & held)
    assert not counts["overlap"], "a held-out prompt is also a training prompt"
    return counts


def sample_policy(policy: Path, rm: Path, prompts: list[PPOPrompt], max_new_tokens: int, seed: int,
                  batch_size: int) -> dict[str, list[float]]:
    """Per-response RM score, length and EOS flag, exactly as ``training.ppo.mean_score`` samples them
    (same config, generator seeding and rollout code); it only keeps the per-response values."""
    import torch

    from training import ppo
    from training.config import PPOConfig
    from training.runtime import init_runtime

    config = PPOConfig(policy=str(policy), reward_model=str(rm), max_new_tokens=max_new_tokens, temperature=1.0,
                       batch_size=batch_size, minibatch_size=1, seed=seed)
    models = ppo._load_models(config, None, init_runtime("cpu"))
    timings = {"generation": 0.0, "scoring": 0.0, "training": 0.0}
    generator = torch.Generator().manual_seed(seed)
    rows: dict[str, list[float]] = {"score": [], "length": [], "eos": []}
    for start in range(0, len(prompts), batch_size):
        rollout = ppo.make_rollout(models, prompts[start:start + batch_size], config, 0.0, generator, None, timings)
        rows["score"] += rollout.raw_scores.tolist()
        rows["length"] += rollout.mask.sum(dim=1).float().tolist()
        rows["eos"] += rollout.eos.float().tolist()
    return rows


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _se(xs: list[float]) -> float:
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def evaluate(args: argparse.Namespace) -> dict:
    from training.ppo import kl_to_reference, mean_score

    prompts = read_ppo_prompts(args.prompts)[: args.limit or None]
    started = time.perf_counter()
    result: dict = {"prompts": len(prompts), "seeds": args.seeds, "max_new_tokens": args.max_new_tokens,
                    "temperature": 1.0}
    per = {}
    for name, policy in (("sft", args.sft), ("ppo", args.ppo)):
        rows: dict[str, list[float]] = {"score": [], "length": [], "eos": []}
        for seed in args.seeds:
            for key, values in sample_policy(policy, args.rm, prompts, args.max_new_tokens, seed,
                                             args.batch_size).items():
                rows[key] += values
        per[name] = rows
        result[name] = {"score": _mean(rows["score"]), "score_se": _se(rows["score"]),
                        "response_length": _mean(rows["length"]), "eos_rate": _mean(rows["eos"])}
        # The library's own evaluation on the first batch of the first seed must give the same mean (same code
        # path, same generator seeding): a check that this loop is mean_score's.
        check = prompts[: args.batch_size]
        official = mean_score(policy, check, reward_model=args.rm, max_new_tokens=args.max_new_tokens,
                              seed=args.seeds[0], batch_size=args.batch_size)
        result[name]["mean_score_first_batch"] = official["score"]
        assert abs(official["score"] - _mean(rows["score"][: len(check)])) < 1e-4, (official, name)
    diffs = [p - s for p, s in zip(per["ppo"]["score"], per["sft"]["score"], strict=True)]  # same prompt, same seed
    result["difference"] = {"score": _mean(diffs), "se_paired": _se(diffs),
                            "ppo_wins": sum(d > 0 for d in diffs) / len(diffs)}
    result["kl_ppo_to_sft"] = kl_to_reference(args.ppo, args.sft, prompts, max_new_tokens=args.max_new_tokens,
                                              seed=args.seeds[0], batch_size=args.batch_size)
    result["kl_sft_to_sft"] = kl_to_reference(args.sft, args.sft, prompts[:32], max_new_tokens=args.max_new_tokens,
                                              seed=args.seeds[0], batch_size=args.batch_size)  # sanity: 0
    result["eval_seconds"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prompts")
    p.add_argument("--hh", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    e = sub.add_parser("eval")
    e.add_argument("--sft", type=Path, required=True)
    e.add_argument("--ppo", type=Path, required=True)
    e.add_argument("--rm", type=Path, required=True)
    e.add_argument("--prompts", type=Path, required=True)
    e.add_argument("--max-new-tokens", type=int, default=32)
    e.add_argument("--seeds", type=int, nargs="+", default=[0])
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--limit", type=int, default=0, help="first N held-out prompts only (0 = all)")
    e.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = make_prompts(args) if args.command == "prompts" else evaluate(args)
    text = json.dumps(result, indent=2)
    print(text)
    if getattr(args, "out", None) and args.command == "eval":
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
