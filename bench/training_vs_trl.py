"""Training throughput, side by side in one run: ours vs TRL 1.16 (SFT, reward model), ours vs a naive
per-sample generate loop, and this machine's fp32 matmul ceiling for MFU.

Run under the bench-only virtualenv (TRL is never a product dependency):

    bench/setup_bench_venv.sh
    .venv-bench/bin/python bench/training_vs_trl.py all --repeats 3 --out bench/results/training/throughput.json

Each pair runs interleaved (ours, theirs, ours, theirs, …) on the same model, data, sequence lengths,
batch composition and step count, so machine noise hits both; the medians and their ratio are reported.
MFU = 6 · parameters · tokens / seconds / measured matmul FLOP/s (2 · … for generation: forward only).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform as std_platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training import data, sources  # noqa: E402
from training.config import GenerateConfig, RewardConfig, SFTConfig  # noqa: E402
from training.encoding import encode_pair, encode_prompt  # noqa: E402
from training.models import TINY_BASE, count_parameters, load_causal_lm, load_tokenizer  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
HH = [SHARED / "hh-rlhf/helpful-base/test.jsonl.gz", SHARED / "hh-rlhf/harmless-base/test.jsonl.gz"]


def quiet() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import warnings

    warnings.filterwarnings("ignore")
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def matmul_gflops(n: int = 2048, repeats: int = 8) -> float:
    """fp32 GFLOP/s of an n×n @ n×n matmul with all of torch's threads: the best of ``repeats`` (the
    ceiling the machine reaches right now; other tenants only ever lower it)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times) / 1e9


def hh_pairs(limit: int) -> list[data.RankingExample]:
    pairs = [e for path in HH for e in sources.hh_rankings(path)]
    train, _ = data.split_by_hash(pairs, 0.1)
    return train[:limit]


def trl_args(cls, steps: int, batch: int, lr: float, out: str, **extra):
    return cls(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
               lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=0,
               logging_steps=steps, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
               dataloader_num_workers=0, **extra)


# --- SFT ---

def sft_pair(base: Path, n: int, steps: int, batch: int, max_length: int) -> dict:
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from training.sft import train_sft

    tokenizer = load_tokenizer(base)
    demos = [data.SFTExample(e.prompt, e.responses[0]) for e in hh_pairs(n)]
    encoded = [encode_pair(tokenizer, d.prompt, d.response, max_length=max_length) for d in demos]
    tokens_per_example = sum(len(ids) for ids, _ in encoded) / len(encoded)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sft.jsonl"
        data.write_jsonl(path, map(data.to_record, demos))
        ours_cfg = SFTConfig(base=str(base), max_length=max_length, batch_size=batch, max_steps=steps,
                             learning_rate=1e-4, warmup_steps=0, eval_fraction=0.0, device="cpu", seed=0,
                             resume=False)
        # Identical sequences for TRL: our encoding (prompt masked, EOS), handed over pre-tokenised.
        rows = [{"input_ids": ids, "completion_mask": [0] * n_prompt + [1] * (len(ids) - n_prompt)}
                for ids, n_prompt in encoded]

        def ours() -> float:
            result = train_sft(ours_cfg, path, Path(tempfile.mkdtemp(dir=tmp)))
            return result.summary["tokens"] / result.summary["train_seconds"]

        def theirs() -> float:
            trainer = SFTTrainer(model=load_causal_lm(base), processing_class=tokenizer,
                                 train_dataset=Dataset.from_list(rows),
                                 args=trl_args(TRLSFTConfig, steps, batch, 1e-4, tmp + "/trl", max_length=max_length,
                                               completion_only_loss=True, packing=False))
            runtime = trainer.train().metrics["train_runtime"]
            return steps * batch * tokens_per_example / runtime

        return {"examples": n, "steps": steps, "batch": batch, "max_length": max_length,
                "mean_tokens_per_example": tokens_per_example, "unit": "tokens/s", "runs": interleave(ours, theirs)}


def sft_grouping(base: Path, n: int, steps: int, batch: int, max_length: int) -> dict:
    """Control for the SFT pair: ours with length-grouped batches vs ours with plain shuffled batches."""
    from training.sft import train_sft

    demos = [data.SFTExample(e.prompt, e.responses[0]) for e in hh_pairs(n)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sft.jsonl"
        data.write_jsonl(path, map(data.to_record, demos))

        def run(grouped: bool) -> float:
            cfg = SFTConfig(base=str(base), max_length=max_length, batch_size=batch, max_steps=steps,
                            learning_rate=1e-4, warmup_steps=0, eval_fraction=0.0, device="cpu", seed=0,
                            resume=False, group_by_length=grouped)
            summary = train_sft(cfg, path, Path(tempfile.mkdtemp(dir=tmp))).summary
            return summary["tokens"] / summary["train_seconds"]

        return {"unit": "tokens/s", "pair": "ours grouped by length vs ours shuffled",
                "runs": interleave(lambda: run(True), lambda: run(False))}


# --- reward model ---

def k_groups(k: int, n: int) -> list[data.RankingExample]:
    """Groups of k real HH responses (the prompt of the first pair; responses from consecutive pairs)."""
    pairs = hh_pairs(n * (k + 1) // 2 + 2)
    groups = []
    for g in range(n):
        chunk = pairs[g * ((k + 1) // 2):(g + 1) * ((k + 1) // 2)]
        responses = [r for e in chunk for r in e.responses][:k]
        groups.append(data.RankingExample(chunk[0].prompt, responses, list(range(1, k + 1))))
    return groups


def rm_pair(base: Path, k: int, groups_n: int, steps: int, group_batch: int, max_length: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    from training.reward import train_reward_model

    tokenizer = load_tokenizer(base)
    groups = k_groups(k, groups_n)
    per_group = math.comb(k, 2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rank.jsonl"
        data.write_jsonl(path, map(data.to_record, groups))
        ours_cfg = RewardConfig(base=str(base), max_length=max_length, batch_size=group_batch, max_steps=steps,
                                learning_rate=1e-4, warmup_steps=0, eval_fraction=0.0, normalize=False,
                                device="cpu", seed=0, resume=False)
        # TRL gets every group as its C(k,2) chosen/rejected pairs, with identical token sequences.
        pairs = []
        for g in groups:
            seqs = [encode_pair(tokenizer, g.prompt, r, max_length=max_length)[0] for r in g.responses]
            pairs += [{"chosen_ids": seqs[i], "rejected_ids": seqs[j]}
                      for i in range(k) for j in range(k) if g.ranks[i] < g.ranks[j]]
        pair_batch = group_batch * per_group  # the same comparisons per optimizer step
        pair_tokens = sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs) / len(pairs)
        tokens_per_s = {"ours": [], "theirs": []}

        def ours() -> float:
            summary = train_reward_model(ours_cfg, path, Path(tempfile.mkdtemp(dir=tmp))).summary
            tokens_per_s["ours"].append(summary["tokens"] / summary["train_seconds"])
            return summary["comparisons_per_s"]

        def theirs() -> float:
            model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1, dtype=torch.float32)
            trainer = RewardTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(pairs),
                                    args=trl_args(TRLRewardConfig, steps, pair_batch, 1e-4, tmp + "/trl",
                                                  max_length=max_length))
            runtime = trainer.train().metrics["train_runtime"]
            tokens_per_s["theirs"].append(steps * pair_batch * pair_tokens / runtime)
            return steps * pair_batch / runtime

        runs = interleave(ours, theirs)
        return {"tokens_per_s": tokens_per_s, "k": k, "groups": groups_n, "steps": steps,
                "groups_per_step": group_batch,
                "pairs_per_step": pair_batch, "forward_rows_per_step": {"ours": group_batch * k,
                                                                        "trl": 2 * pair_batch},
                "unit": "comparisons/s", "runs": runs}


# --- generation ---

def generate_pair(base: Path, prompts_n: int, k: int, max_new_tokens: int, batch: int) -> dict:
    from training.generate import generate

    model, tokenizer = load_causal_lm(base), load_tokenizer(base)
    prompts = [e.prompt for e in hh_pairs(prompts_n)]
    config = GenerateConfig(model=str(base), k=k, max_new_tokens=max_new_tokens, batch_size=batch, top_p=0.95,
                            device="cpu", seed=0)

    def ours() -> float:
        start = time.perf_counter()
        results = generate(model, tokenizer, prompts, config)
        return sum(c["tokens"] for group in results for c in group) / (time.perf_counter() - start)

    def naive() -> float:
        start, produced = time.perf_counter(), 0
        torch.manual_seed(0)
        for prompt in prompts:
            ids = torch.tensor([encode_prompt(tokenizer, prompt)[-(512 - max_new_tokens):]])
            for _ in range(k):
                out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.95,
                                     max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
                produced += out.shape[1] - ids.shape[1]
        return produced / (time.perf_counter() - start)

    return {"prompts": prompts_n, "k": k, "max_new_tokens": max_new_tokens, "batch": batch,
            "unit": "generated tokens/s", "runs": interleave(ours, naive)}


# --- running and reporting ---

REPEATS = 3


def interleave(ours, theirs) -> dict:
    """One untimed warm-up of each, then REPEATS alternating timed runs, each pair preceded by a fresh
    matmul ceiling so MFU compares each run with what the shared machine could do at that moment."""
    ours(), theirs()
    runs = {"ours": [], "theirs": [], "ceiling_gflops": []}
    for _ in range(REPEATS):
        runs["ceiling_gflops"].append(matmul_gflops())
        runs["ours"].append(ours())
        runs["theirs"].append(theirs())
    runs["load_average"] = os.getloadavg()[0]
    return runs


def summarise(result: dict, params: int, flops_per_token_param: int = 6) -> dict:
    runs = result["runs"]
    ours, theirs = statistics.median(runs["ours"]), statistics.median(runs["theirs"])
    ratios = [a / b for a, b in zip(runs["ours"], runs["theirs"], strict=True)]
    result.update({"median_ours": ours, "median_theirs": theirs, "ratio_of_medians": ours / theirs,
                   "median_paired_ratio": statistics.median(ratios),
                   "median_ceiling_gflops": statistics.median(runs["ceiling_gflops"])})
    token_rates = ({"ours": runs["ours"], "theirs": runs["theirs"]} if result["unit"].endswith("tokens/s")
                   else {who: v[1:] for who, v in result["tokens_per_s"].items()})  # [0] is the warm-up
    for who, rates in token_rates.items():
        result[f"tokens_per_s_{who}"] = statistics.median(rates)
        result[f"mfu_{who}"] = statistics.median(flops_per_token_param * params * r / (c * 1e9)
                                                 for r, c in zip(rates, runs["ceiling_gflops"], strict=True))
    return result


def main() -> None:
    global REPEATS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["all", "matmul", "sft", "sft-grouping", "rm", "generate"])
    parser.add_argument("--base", type=Path, default=TINY_BASE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    REPEATS = args.repeats
    quiet()
    params = count_parameters(load_causal_lm(args.base))
    ceiling = statistics.median(matmul_gflops() for _ in range(5))
    report = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "python": sys.version.split()[0], "torch": torch.__version__,
                          "platform": std_platform.platform()},
              "base": str(args.base), "parameters": params, "matmul_fp32_gflops_at_start": ceiling,
              "load_average_at_start": os.getloadavg()[0]}
    print(json.dumps(report), flush=True)
    if args.what in ("all", "sft"):
        report["sft"] = summarise(sft_pair(args.base, 256, 12, 8, 256), params)
        print(json.dumps(report["sft"]), flush=True)
    if args.what == "sft-grouping":
        report["sft_grouping"] = summarise(sft_grouping(args.base, 256, 12, 8, 256), params)
        print(json.dumps(report["sft_grouping"]), flush=True)
    if args.what in ("all", "rm"):
        report["rm_k4"] = summarise(rm_pair(args.base, 4, 48, 6, 2, 256), params)
        print(json.dumps(report["rm_k4"]), flush=True)
        report["rm_k9"] = summarise(rm_pair(args.base, 9, 12, 3, 1, 256), params)
        print(json.dumps(report["rm_k9"]), flush=True)
    if args.what in ("all", "generate"):
        report["generate"] = summarise(generate_pair(args.base, 8, 4, 48, 32), params, 2)
        print(json.dumps(report["generate"]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
