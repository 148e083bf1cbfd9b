"""Candidate generation on the real base: ours (batched, left-padded, KV cache) against a naive loop that
calls transformers' `generate` once per sequence, on the same prompts, lengths and sampling settings, in
one run. Tokens per second of generated text; the median of the repeats and the ratio.

    .venv/bin/python bench/generation_speed.py [--base var/bases/smollm2-135m-instruct] [--prompts 16] \
        [--k 4] [--max-new-tokens 64] [--batch-size 32] [--repeats 3]

Prompts are the first HH-RLHF helpful-base test prompts (../shared/data), rendered with the base's chat
template, as the demo project generates them. Both sides stop at EOS; neither has stop strings, so the
comparison is of decoding alone.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from training.config import GenerateConfig
from training.encoding import encode_prompt
from training.generate import generate
from training.models import load_causal_lm, load_tokenizer
from training.sources import hh_messages, split_hh_pair

ROOT = Path(__file__).resolve().parents[1]


def hh_prompts(n: int) -> list[list[dict]]:
    import gzip

    path = ROOT.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
    prompts = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            messages = hh_messages(split_hh_pair(record["chosen"], record["rejected"])[0])
            if messages and len(messages) == 1:
                prompts.append(messages)
            if len(prompts) == n:
                return prompts
    return prompts


def ours(model, tokenizer, prompts, args) -> tuple[float, int]:
    config = GenerateConfig(model="-", k=args.k, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            temperature=1.0, top_p=0.95, chat_template=True, stop_at_turn_end=False, seed=0,
                            device="cpu", resume=False)
    started = time.perf_counter()
    results = generate(model, tokenizer, prompts, config)
    return time.perf_counter() - started, sum(c["tokens"] for group in results for c in group)


def naive(model, tokenizer, prompts, args) -> tuple[float, int]:
    started, produced = time.perf_counter(), 0
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([encode_prompt(tokenizer, prompt, chat_template=True)])
        for c in range(args.k):
            torch.manual_seed(i * 1_009 + c)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_p=0.95, max_new_tokens=args.max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = out[0, ids.shape[1]:].tolist()
            produced += new.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in new else len(new)
    return time.perf_counter() - started, produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=ROOT / "var" / "bases" / "smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "generation_speed.json")
    args = parser.parse_args()
    model, tokenizer = load_causal_lm(args.base).eval(), load_tokenizer(args.base)
    prompts = hh_prompts(args.prompts)
    runs = {"ours": [], "naive": []}
    with torch.no_grad():
        for repeat in range(args.repeats):  # alternate, so both see the same machine
            for name, fn in (("ours", ours), ("naive", naive)):
                seconds, tokens = fn(model, tokenizer, prompts, args)
                runs[name].append({"seconds": round(seconds, 2), "tokens": tokens,
                                   "tokens_per_s": round(tokens / seconds, 1)})
                print(f"repeat {repeat + 1} {name:5}: {tokens} tokens in {seconds:.1f} s "
                      f"= {tokens / seconds:.1f} tokens/s")
    medians = {name: statistics.median(r["tokens_per_s"] for r in rows) for name, rows in runs.items()}
    result = {"base": str(args.base), "prompts": len(prompts), "k": args.k, "max_new_tokens": args.max_new_tokens,
              "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(), "runs": runs,
              "median_tokens_per_s": medians, "ratio": round(medians["ours"] / medians["naive"], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"median tokens/s: ours {medians['ours']:.1f}, naive {medians['naive']:.1f}: {result['ratio']}x")


if __name__ == "__main__":
    main()
