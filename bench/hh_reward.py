"""Real data: a reward model on Anthropic HH-RLHF, ours (trained with the CLI) vs TRL 1.16's RewardTrainer
on the same base, data, token budget and seed, vs the length heuristic. Held-out accuracy per subset.

    .venv-bench/bin/python bench/hh_reward.py prepare --hh var/hh            # after `training convert`
    # ... train ours with `python -m training rm` (docs/benchmarks-training.md has the exact commands)
    .venv-bench/bin/python bench/hh_reward.py trl --base var/hh-sft --hh var/hh --out var/hh-rm-trl
    .venv-bench/bin/python bench/hh_reward.py compare --ours var/hh-rm --trl var/hh-rm-trl --hh var/hh

Both trainers see identical token sequences: ours encodes them (plain format, EOS, prompt cut from the
left at max_length) and TRL receives them pre-tokenised, so TRL's length filter drops nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training import data  # noqa: E402
from training.encoding import encode_pair  # noqa: E402
from training.models import load_tokenizer  # noqa: E402

BUDGET_FILE = "rankings.train.budget.jsonl"


def prepare(args) -> None:
    train = data.read_rankings(args.hh / "rankings.train.jsonl")
    budget = train[::args.stride]  # every n-th training pair: the token budget
    data.write_jsonl(args.hh / BUDGET_FILE, map(data.to_record, budget))
    print(json.dumps({"train_pairs": len(train), "budget_pairs": len(budget)}))


def train_trl(args) -> None:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tokenizer = load_tokenizer(args.base)
    rows = []
    for e in data.read_rankings(args.hh / BUDGET_FILE):
        chosen, rejected = (encode_pair(tokenizer, e.prompt, r, max_length=args.max_length)[0] for r in e.responses)
        rows.append({"chosen_ids": chosen, "rejected_ids": rejected})
    model = AutoModelForSequenceClassification.from_pretrained(str(args.base), num_labels=1, dtype=torch.float32)
    config = RewardConfig(output_dir=str(args.out), num_train_epochs=1, per_device_train_batch_size=args.batch_size,
                          learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=args.warmup_steps,
                          weight_decay=0.0, max_grad_norm=1.0, seed=args.seed, max_length=args.max_length,
                          logging_steps=50, save_strategy="no", report_to=[], use_cpu=True)
    trainer = RewardTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows), args=config)
    started = time.perf_counter()
    metrics = trainer.train().metrics
    trainer.save_model(str(args.out))
    tokenizer.save_pretrained(str(args.out))
    (args.out / "trl_summary.json").write_text(json.dumps({**metrics, "wall_seconds": time.perf_counter() - started,
                                                           "pairs": len(rows)}, indent=2))
    print(json.dumps(metrics))


@torch.no_grad()
def scores_for(model_dir: Path, kind: str, pairs: list[tuple], max_length: int) -> list[float]:
    tokenizer = load_tokenizer(model_dir)
    if kind == "ours":
        from training.reward import RewardModel, score_pairs

        return score_pairs(RewardModel.from_pretrained(model_dir), tokenizer, pairs, max_length=max_length)
    from transformers import AutoModelForSequenceClassification

    from training.reward import collate_rankings

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    for prompt, response in pairs:
        ids = encode_pair(tokenizer, prompt, response, max_length=max_length)[0]
        batch = collate_rankings([([ids], [1], 1.0)], tokenizer.pad_token_id)
        out.append(float(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0, 0]))
    return out


def compare(args) -> None:
    held = data.read_rankings(args.hh / "rankings.heldout.jsonl")
    pairs = [(e.prompt, r) for e in held for r in e.responses]
    results: dict[str, dict] = {}
    columns = {"length heuristic": [float(len(r)) for _, r in pairs]}
    for name, path, kind in (("ours (CLI, k-way loss)", args.ours, "ours"), ("TRL RewardTrainer", args.trl, "trl")):
        if path is not None:
            columns[name] = scores_for(path, kind, pairs, args.max_length)
    for name, scores in columns.items():
        by_subset: dict[str, list[float]] = {}
        for i, e in enumerate(held):
            chosen, rejected = scores[2 * i], scores[2 * i + 1]
            hit = 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0  # ties count half
            subset = (e.id or "?").split(":")[0]
            by_subset.setdefault(subset, []).append(hit)
            by_subset.setdefault("all", []).append(hit)
        results[name] = {s: {"accuracy": sum(v) / len(v), "pairs": len(v)} for s, v in sorted(by_subset.items())}
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--hh", type=Path, required=True)
    p.add_argument("--stride", type=int, default=4, help="keep every n-th training pair (4: ~1,050 pairs)")
    t = sub.add_parser("trl")
    t.add_argument("--base", type=Path, required=True)
    t.add_argument("--hh", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    for flag, kind, default in (("--max-length", int, 256), ("--batch-size", int, 4), ("--learning-rate", float, 1e-4),
                                ("--warmup-steps", int, 10), ("--seed", int, 0)):
        t.add_argument(flag, type=kind, default=default)
    c = sub.add_parser("compare")
    c.add_argument("--hh", type=Path, required=True)
    c.add_argument("--ours", type=Path)
    c.add_argument("--trl", type=Path)
    c.add_argument("--max-length", type=int, default=256)
    c.add_argument("--out", type=Path)
    args = parser.parse_args()
    {"prepare": prepare, "trl": train_trl, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()
