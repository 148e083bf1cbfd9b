"""Issue 14: listwise (Plackett–Luce) DPO against pairwise DPO on the OpenAssistant k-way rankings.

    .venv/bin/python bench/dpo_listwise_vs_pairwise.py --base var/bases/smollm2-135m-instruct --work var/dpo-oa
    .venv/bin/python bench/dpo_listwise_vs_pairwise.py --base training/assets/tiny-base --work /tmp/dpo-oa \\
        --epochs 1 --max-length 96          # a quick check of the plumbing (the tiny base learns nothing)

What it does, in one run, on one split:
1. converts ``../shared/data/open-assistant/en_100_tree.jsonl`` with ``python -m training convert oasst``
   (sibling replies with their human ranks → k-way rankings, k = 2…9; split by the record hash of the
   prompt, ``--test-fraction`` held out for the test only);
2. trains three policies from the same base (also the frozen reference), same epochs, batch of rankings,
   learning rate, β, LoRA or not, and seed; no held-out data during training (no model selection on the
   test): the final step is the model that is tested.
   - ``listwise``: the Plackett–Luce loss over each whole ranking, ties grouped (``loss="listwise"``);
   - ``pairwise``: the mean −log σ(r_better − r_worse) over each ranking's pairs (``loss="pairwise"``);
   - ``pairs``: the same rankings split into all their (better, worse) pairs, each pair one example
     (DPO as TRL trains it on such data); more examples, so more steps for the same epochs;
3. tests each on the held-out rankings with its implicit reward β·(log π − log π_ref): the share of
   correctly ordered pairs (ties in the ranking are not pairs), per k, and the mean per-ranking Kendall τ
   between implicit-reward order and the human ranks; standard errors by a bootstrap over rankings (pairs of
   one ranking are not independent). "longer wins" and the untrained policy (all rewards 0) are baselines.

Writes ``WORK/results.json`` and prints it; each policy's training log is in ``WORK/<variant>/``.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training import data  # noqa: E402
from training.config import DPOConfig  # noqa: E402
from training.dpo import collate_dpo, encode_ranking, reference_logps, response_logps, train_dpo  # noqa: E402
from training.models import load_causal_lm, load_tokenizer  # noqa: E402

OA_FILE = ROOT.parent / "shared" / "data" / "open-assistant" / "en_100_tree.jsonl"
VARIANTS = ("listwise", "pairwise", "pairs")


def split_into_pairs(examples: list[data.RankingExample]) -> list[data.RankingExample]:
    """Every (better, worse) pair of every ranking as a k = 2 ranking; tied responses make no pair."""
    pairs = []
    for e in examples:
        for i, j in combinations(range(e.k), 2):
            if e.ranks[i] == e.ranks[j]:
                continue
            better, worse = (i, j) if e.ranks[i] < e.ranks[j] else (j, i)
            pairs.append(data.RankingExample(e.prompt, [e.responses[better], e.responses[worse]], [1, 2], e.weight))
    return pairs


def ranking_scores(rewards: list[float], ranks: list[int]) -> tuple[float, int, float]:
    """(correct pairs, pairs, Kendall τ-b-like agreement in [−1, 1]) of one ranking: a pair counts when its
    human ranks differ; a reward tie counts half."""
    correct = pairs = 0.0
    for i, j in combinations(range(len(ranks)), 2):
        if ranks[i] == ranks[j]:
            continue
        pairs += 1
        better, worse = (i, j) if ranks[i] < ranks[j] else (j, i)
        diff = rewards[better] - rewards[worse]
        correct += 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0
    return correct, int(pairs), (2 * correct / pairs - 1) if pairs else 0.0


def bootstrap_se(rows: list[tuple[float, int, float]], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Standard errors of (pair accuracy, mean τ) by resampling rankings."""
    rng = random.Random(seed)
    accs, taus = [], []
    for _ in range(draws):
        sample = [rows[rng.randrange(len(rows))] for _ in rows]
        accs.append(sum(r[0] for r in sample) / max(sum(r[1] for r in sample), 1))
        taus.append(statistics.fmean(r[2] for r in sample))
    return statistics.stdev(accs), statistics.stdev(taus)


def summarise(per_ranking: list[tuple[float, int, float]], ks: list[int]) -> dict:
    rows = [r for r in per_ranking if r[1]]
    ks = [k for k, r in zip(ks, per_ranking, strict=True) if r[1]]
    se_acc, se_tau = bootstrap_se(rows)
    by_k = {}
    for k in sorted(set(ks)):
        sel = [r for kk, r in zip(ks, rows, strict=True) if kk == k]
        by_k[f"k{k}"] = {"rankings": len(sel), "pairs": sum(r[1] for r in sel),
                         "accuracy": round(sum(r[0] for r in sel) / sum(r[1] for r in sel), 4)}
    return {"rankings": len(rows), "pairs": sum(r[1] for r in rows),
            "pair_accuracy": round(sum(r[0] for r in rows) / sum(r[1] for r in rows), 4),
            "pair_accuracy_se": round(se_acc, 4),
            "kendall_tau": round(statistics.fmean(r[2] for r in rows), 4), "kendall_tau_se": round(se_tau, 4),
            "by_k": by_k}


@torch.no_grad()
def implicit_rewards(model_dir: Path, groups, ref: list[list[float]], pad_id: int, beta: float, batch: int
                     ) -> list[list[float]]:
    model = load_causal_lm(str(model_dir), "cpu").eval()
    out = []
    for start in range(0, len(groups), batch):
        chunk = groups[start:start + batch]
        logps = response_logps(model, collate_dpo(chunk, pad_id))
        for b, (seqs, _, _, _) in enumerate(chunk):
            out.append([beta * (logps[b, i].item() - ref[start + b][i]) for i in range(len(seqs))])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=OA_FILE)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=2, help="rankings per step (pairs count as rankings)")
    parser.add_argument("--learning-rate", type=float, default=5e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lora", action="store_true", help="LoRA (r=16) instead of full fine-tuning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work.resolve()
    oa = work / "oa"
    subprocess.run([sys.executable, "-m", "training", "convert", "oasst", str(args.data), "--out", str(oa),
                    "--eval-fraction", str(args.test_fraction)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    train = data.read_rankings(oa / "rankings.train.jsonl")
    test = data.read_rankings(oa / "rankings.heldout.jsonl")
    pairs_file = oa / "rankings.train.pairs.jsonl"
    data.write_jsonl(pairs_file, map(data.to_record, split_into_pairs(train)))

    tokenizer = load_tokenizer(str(args.base))
    chat = (Path(args.base) / "chat_template.jinja").exists() or bool(getattr(tokenizer, "chat_template", None))
    common = dict(base=str(args.base), chat_template=chat, beta=args.beta, epochs=args.epochs,
                  batch_size=args.batch_size, learning_rate=args.learning_rate, max_length=args.max_length,
                  lora=args.lora, lora_r=16, lora_alpha=32, seed=args.seed, eval_fraction=0.0, device="cpu",
                  log_every=5, resume=False)
    probe = DPOConfig(**common)
    test_groups = [encode_ranking(tokenizer, e, probe) for e in test]
    pad = tokenizer.pad_token_id
    ref = reference_logps(load_causal_lm(str(args.base), "cpu"), test_groups, pad, 8, torch.device("cpu"))
    ks = [e.k for e in test]
    results = {"base": str(args.base), "data": str(args.data), "test_fraction": args.test_fraction,
               "train_rankings": len(train), "train_pairs": len(split_into_pairs(train)), "test_rankings": len(test),
               "settings": {k: v for k, v in common.items() if k != "base"}, "baselines": {}, "variants": {}}
    results["baselines"]["untrained (rewards all 0)"] = summarise(
        [ranking_scores([0.0] * e.k, e.ranks) for e in test], ks)
    results["baselines"]["longer wins"] = summarise(
        [ranking_scores([float(len(r)) for r in e.responses], e.ranks) for e in test], ks)

    for variant in args.variants:
        out = work / variant
        config = DPOConfig(**common, loss="listwise" if variant == "listwise" else "pairwise")
        source = pairs_file if variant == "pairs" else oa / "rankings.train.jsonl"
        started = time.perf_counter()
        cpu = time.process_time()
        result = train_dpo(config, source, out,
                           on_log=lambda step, total, m, v=variant: print(
                               f"[{v}] step {step}/{total} loss {m.get('train/loss', float('nan')):.4f}", flush=True))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        rewards = implicit_rewards(out, test_groups, ref, pad, args.beta, 8)
        summary = result.summary
        results["variants"][variant] = {
            "status": result.status, "steps": result.steps, "train_examples": summary.get("train_examples"),
            "wall_seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "tokens": summary.get("tokens"),
            "final_train_loss": summary.get("train/loss"), "final_train_accuracy": summary.get("train/accuracy"),
            "test": summarise([ranking_scores(r, e.ranks) for r, e in zip(rewards, test, strict=True)], ks)}
        print(json.dumps({variant: results["variants"][variant]}, indent=1), flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
