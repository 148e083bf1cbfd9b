"""Issue 10, proof 1, on an accelerator: reward-model configurations that train every layer (LoRA on all linear
layers, LoRA on q/v, full fine-tuning), which the 2-core CPU here cannot afford at HH's size.

The protocol keeps the held-out set out of every choice:
1. each configuration trains on half A of ``bench/hh_learning.py``'s fixed split and is scored on half B (the
   judge's half, 1,947 pairs), helpful-base and harmless-base apart; the held-out set is scored too, for the
   record, but never read to choose;
2. the configuration best on half B's helpful-base (issue 10's target subset) trains again on both halves
   (3,940 pairs) and is scored once on the 716 held-out pairs, beside the length heuristics.

    .venv/bin/python bench/hh_learning.py split
    python bench/hh_rm_sweep.py --device cuda --budget 420 --out var/hh-learn/sweep.json

``--budget`` (seconds) bounds the sweep: a configuration starts only while the time already spent plus three
times the longest one so far (the next one, and the final run on twice the data) fits. ``--smoke`` runs every
configuration on a few pairs (a CPU check of the script).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from hh_learning import BASE, WORK, HeldOut, train_ours  # noqa: E402

from training import data  # noqa: E402

# name, then what differs from the shared settings (mean pooling, max length 384, batch 8, seed 0).
CONFIGS = [
    ("lora-all-r16-lr1e-4-2ep", dict(lora_targets="all-linear", lora_r=16, lr=1e-4, epochs=2)),
    ("full-lr1e-5-2ep", dict(full=True, lr=1e-5, epochs=2)),
    ("lora-qv-r16-lr2e-4-2ep", dict(lora_r=16, lr=2e-4, epochs=2)),
    ("lora-all-r16-lr3e-5-1ep", dict(lora_targets="all-linear", lora_r=16, lr=3e-5, epochs=1)),
    ("full-lr1e-5-1ep", dict(full=True, lr=1e-5, epochs=1)),
    ("lora-all-r64-lr1e-4-1ep", dict(lora_targets="all-linear", lora_r=64, lr=1e-4, epochs=1)),
    ("lora-all-r16-lr1e-4-2ep-last", dict(lora_targets="all-linear", lora_r=16, lr=1e-4, epochs=2, pooling="last")),
]


def settings(args, overrides: dict) -> argparse.Namespace:
    shared = dict(base=args.base, work=args.work, device=args.device, layers=0, head_only=False, full=False,
                  lora_r=16, lora_targets="", pooling="mean", weight_decay=0.0, batch_size=8, epochs=2, lr=1e-4,
                  max_length=args.max_length, seed=args.seed)
    return argparse.Namespace(**{**shared, **overrides})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=BASE)
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the sweep and the final run")
    parser.add_argument("--only", nargs="*", help="configuration names to run (default: all, in order)")
    parser.add_argument("--smoke", type=int, default=0, help="train on this many pairs, score this many (a check)")
    parser.add_argument("--out", type=Path, default=WORK / "sweep.json")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matrix products on the accelerator (fp32 weights)
    torch.backends.cudnn.allow_tf32 = True
    started = time.perf_counter()
    half_a = data.read_rankings(args.work / "rm.jsonl")
    half_b = data.read_rankings(args.work / "judge.jsonl")
    if args.smoke:
        half_a, half_b = half_a[:args.smoke], half_b[:args.smoke]
    dev_args = settings(args, {})
    validation, heldout = HeldOut(dev_args, {}, "judge"), HeldOut(dev_args, {})
    if args.smoke:
        for held in (validation, heldout):
            held.examples, held.groups = held.examples[:args.smoke], held.groups[:args.smoke]
    result: dict = {"command": " ".join(sys.argv), "device": torch.cuda.get_device_name() if args.device != "cpu"
                    else "cpu", "torch": torch.__version__, "half_a": len(half_a), "half_b": len(half_b),
                    "heuristics": {"half_b": validation.heuristics(), "heldout": heldout.heuristics()}, "sweep": []}
    longest = 0.0
    for name, overrides in CONFIGS:
        if args.only and name not in args.only:
            continue
        spent = time.perf_counter() - started
        if longest and spent + 3 * longest > args.budget:  # this one, then the final on twice the data
            result["sweep"].append({"name": name, "skipped": f"budget: {spent:.0f} s spent, last run {longest:.0f} s"})
            continue
        one = time.perf_counter()
        run_args = settings(args, overrides)
        model, run = train_ours(run_args, half_a, args.work / "sweep" / name)
        model.eval()
        row = {"name": name, **{k: v for k, v in overrides.items()}, **run,
               "half_b": validation.accuracy(model), "heldout": heldout.accuracy(model)}
        row["seconds"] = round(time.perf_counter() - one, 1)
        longest = max(longest, row["seconds"])
        result["sweep"].append(row)
        print(json.dumps({k: row[k] for k in ("name", "seconds", "half_b", "heldout")}), flush=True)
        del model
        write(args, result)
    done = [r for r in result["sweep"] if "half_b" in r]
    if done:
        best = max(done, key=lambda r: r["half_b"]["helpful-base"]["accuracy"])
        overrides = dict(CONFIGS)[best["name"]]
        one = time.perf_counter()
        out = args.work / "sweep" / f"{best['name']}-both"
        model, run = train_ours(settings(args, overrides), half_a + half_b, out)
        model.eval()
        result["final"] = {"name": best["name"], "chosen_by": "half B helpful-base accuracy", "pairs": len(half_a) +
                           len(half_b), **run, "heldout": heldout.accuracy(model),
                           "seconds": round(time.perf_counter() - one, 1)}
        print(json.dumps({"final": result["final"]}), flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    write(args, result)


def write(args, result: dict) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
