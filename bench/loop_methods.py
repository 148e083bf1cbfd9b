"""Issue 14's quality at equal CPU time: PPO, RLOO, pairwise DPO and listwise DPO on the real base.

    .venv/bin/python bench/hh_learning.py split                 # first: the split,
    .venv/bin/python bench/hh_learning.py curve|judge --tag T ... #   half A's RM and the judge (half B)
    .venv/bin/python bench/loop_methods.py run --method ppo --budget 3600 --tag T
    .venv/bin/python bench/loop_methods.py run --method rloo --budget 3600 --tag T
    .venv/bin/python bench/loop_methods.py run --method dpo-listwise --budget 3600 --tag T
    .venv/bin/python bench/loop_methods.py run --method dpo-pairwise --budget 3600 --tag T
    .venv/bin/python bench/loop_methods.py eval --tag T --out bench/results/loop_methods.json

Every method starts from SmolLM2-135M-Instruct (the SFT policy: its makers' SFT model) and learns from one
signal, half A's reward model (``hh_learning.py curve --tag T``):
- PPO and RLOO sample half A's prompts online and are scored by it (PPO as in ``hh_learning.py rl``; RLOO with
  the same actor, learning rate, KL coefficient and 16 samples per iteration: 4 prompts × k = 4);
- the DPO runs train on k = 4 samples of the SFT policy for half A's prompts, ranked by the same RM: the RM
  stands in for the labelers of a round's k-way rankings. Listwise DPO takes each ranking whole
  (Plackett–Luce); pairwise DPO takes the same rankings split into all their pairs (6 per ranking), as a
  pairwise trainer would.

Each method gets the same budget of process CPU time (``time.process_time``: every thread of its process),
from before its models load to its stop; a run stops at the first iteration (RL) or optimizer step (DPO) that
starts over budget, and saves its policy. The DPO runs are charged the sampling and ranking of their data as
well (done once, by whichever DPO run comes first, and charged to both). Each run is its own process.

``eval`` samples every finished policy and the SFT policy once on the first ``--eval-prompts`` held-out
prompts with the same seeds, and scores them by the training RM and by the judge (half B: never trained on,
never used in training), with KL to the SFT policy in nats per sequence, response length and EOS rate.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpo_listwise_vs_pairwise import split_into_pairs  # noqa: E402
from hh_learning import BASE, WORK, evaluate_heldout, ppo_config, tagged, write_prompts  # noqa: E402

from training import data  # noqa: E402

METHODS = ("ppo", "rloo", "dpo-listwise", "dpo-pairwise")


def paths(args) -> dict[str, Path]:
    methods = tagged(args, "methods")
    ranked = methods / "dpo-data"
    return {"rm": tagged(args, "rm"), "judge": tagged(args, "judge"), "dir": methods,
            "prompts": args.work / "prompts.train.jsonl", "rankings": ranked / "rankings.jsonl",
            "held": ranked / "rankings.heldout.jsonl", "rankings_meta": ranked / "meta.json"}


class Budget:
    """Process CPU seconds since the start (plus ``spent`` elsewhere), against the budget."""

    def __init__(self, seconds: float, spent: float = 0.0, wall_spent: float = 0.0):
        self.seconds, self.spent, self.wall_spent = seconds, spent, wall_spent
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()

    def used(self) -> float:
        return self.spent + time.process_time() - self.cpu0

    def over(self) -> bool:
        return self.used() >= self.seconds

    def wall(self) -> float:
        return self.wall_spent + time.perf_counter() - self.wall0


def rloo_config(args, rm: Path):
    from training.config import RLOOConfig

    return RLOOConfig(policy=str(args.base), reward_model=str(rm), seed=args.seed, iterations=args.max_iterations,
                      batch_size=4, k=4, minibatch_size=8, update_epochs=2, loss="clipped",
                      learning_rate=args.ppo_lr, lora=True, lora_r=16, lora_alpha=32, kl_coef=args.kl_coef,
                      kl_penalty="sequence", max_new_tokens=64, max_prompt_length=args.max_length - 64,
                      temperature=1.0, chat_template=True, checkpoint_every=10, resume=False, device="cpu")


def dpo_config(args, loss: str, n_rankings: int):
    from training.config import DPOConfig

    # Held-out checks about 4 times per pass over the data (at least 10 steps apart: each costs about a tenth
    # of a pass's forward work); the best policy by held-out loss is kept.
    per_epoch = max(1, n_rankings * (6 if loss == "pairwise" else 1) // args.dpo_batch_size)
    return DPOConfig(base=str(args.base), chat_template=True, beta=args.dpo_beta, loss="pairwise" if loss == "pairwise"
                     else "listwise", batch_size=args.dpo_batch_size, learning_rate=args.dpo_lr, lora=True, lora_r=16,
                     lora_alpha=32, epochs=args.dpo_epochs, warmup_steps=10, min_lr_ratio=1.0,
                     max_length=args.max_length, eval_every=max(10, per_epoch // 4), log_every=5,
                     seed=args.seed, resume=False, device="cpu")


def rank_samples(args, p: dict[str, Path], budget: Budget) -> dict:
    """k = 4 samples of the SFT policy for the first ``--dpo-prompts`` half-A prompts, ranked by the RM
    (1 = its highest score). Cached with the CPU seconds it took."""
    from training.config import GenerateConfig
    from training.generate import CANDIDATES_FILE, generate_candidates
    from training.models import load_tokenizer
    from training.reward import RewardModel, score_pairs

    folder = p["rankings"].parent
    if p["rankings_meta"].exists():
        meta = json.loads(p["rankings_meta"].read_text())
        if meta["prompts"] == args.dpo_prompts:
            return meta
        print(f"  the cached rankings are for {meta['prompts']} prompts, not {args.dpo_prompts}: made again")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "prompts.jsonl"
    data.write_jsonl(prompts, map(data.to_record, data.read_ppo_prompts(p["prompts"])[:args.dpo_prompts]))
    generated = generate_candidates(
        GenerateConfig(model=str(args.base), k=4, max_new_tokens=64, temperature=1.0, chat_template=True,
                       batch_size=32, seed=args.seed, resume=False, device="cpu"),
        prompts, folder, on_log=lambda step, total, m: print(f"  sampling {step}/{total}", flush=True))
    model = RewardModel.from_pretrained(p["rm"]).eval()
    tokenizer = load_tokenizer(str(p["rm"]))
    rankings, skipped = [], 0
    for _, record in data.iter_jsonl(folder / CANDIDATES_FILE):
        responses = [c["text"] for c in record["candidates"] if c["text"].strip()]
        if len(responses) < 2:
            skipped += 1
            continue
        scores = score_pairs(model, tokenizer, [(record["prompt"], r) for r in responses], max_length=args.max_length)
        order = sorted(range(len(responses)), key=lambda i: -scores[i])
        ranks = [0] * len(responses)
        for position, i in enumerate(order):
            ranks[i] = position + 1  # scores are real numbers: no ties
        rankings.append(data.RankingExample(record["prompt"], responses, ranks, id=record["prompt_id"]))
    # DPO keeps its best policy by held-out loss: up to 16 rankings (10 %), by other digits of the record hash
    # than the split's (half A holds no prompt that training.data's own held-out rule would pick).
    held = [e for e in rankings if int(data.record_hash(e.prompt)[16:24], 16) % 10 == 0][:16]
    data.write_jsonl(p["rankings"], (data.to_record(e) for e in rankings if e not in held))
    data.write_jsonl(p["held"], map(data.to_record, held))
    meta = {"prompts": args.dpo_prompts, "rankings": len(rankings) - len(held), "heldout_rankings": len(held),
            "skipped_prompts": skipped,
            "cpu_seconds": round(budget.used(), 1), "wall_seconds": round(budget.wall(), 1),
            "generate": {k: generated.summary.get(k) for k in ("generated_tokens", "tokens_per_s", "finish_reasons")}}
    p["rankings_meta"].write_text(json.dumps(meta, indent=2))
    return meta


def run(args) -> None:
    from training.dpo import train_dpo
    from training.ppo import train_ppo
    from training.rloo import train_rloo

    budget = Budget(args.budget)
    p = paths(args)
    out = p["dir"] / args.method
    shutil.rmtree(out, ignore_errors=True)
    write_prompts(args)  # as `hh_learning.py rl` writes them, so that this runs without it

    def log(step, total, metrics):
        shown = {k: round(v, 3) for k, v in metrics.items() if k.split("/")[-1] in (
            "score", "kl", "response_length", "loss", "accuracy", "margin")}
        print(f"  {args.method} {step} cpu {budget.used():.0f}/{args.budget:.0f} s {shown}", flush=True)

    extra = {}
    if args.method == "ppo":
        config = ppo_config(args, p["rm"], p["judge"], iterations=args.max_iterations, eval_every=0, resume=False,
                            checkpoint_every=10)
        result = train_ppo(config, p["prompts"], out, on_log=log, should_stop=budget.over)
    elif args.method == "rloo":
        config = rloo_config(args, p["rm"])
        result = train_rloo(config, p["prompts"], out, on_log=log, should_stop=budget.over)
    else:
        meta = rank_samples(args, p, budget)
        budget = Budget(args.budget, meta["cpu_seconds"], meta["wall_seconds"])  # charged in full, even when cached
        examples = data.read_rankings(p["rankings"])
        train_file, held_file = p["rankings"], p["held"]
        if args.method == "dpo-pairwise":
            train_file, held_file = out / "pairs.jsonl", out / "pairs.heldout.jsonl"
            out.mkdir(parents=True)
            data.write_jsonl(train_file, map(data.to_record, split_into_pairs(examples)))
            data.write_jsonl(held_file, map(data.to_record, split_into_pairs(data.read_rankings(p["held"]))))
        config = dpo_config(args, args.method.removeprefix("dpo-"), len(examples))
        result = train_dpo(config, train_file, out, eval_data=held_file, on_log=log, should_stop=budget.over)
        if not (out / "config.json").exists():
            raise SystemExit(f"{args.method}: the budget ran out before the first held-out check "
                             f"(step {config.eval_every}); no policy to evaluate. Raise --budget.")
        extra = {"ranking_data": meta}
    results = {"method": args.method, "budget_cpu_seconds": args.budget, "cpu_seconds": round(budget.used(), 1),
               "wall_seconds": round(budget.wall(), 1), "config": config.to_dict(), "summary": result.summary, **extra}
    (out / "budget.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "config"}, indent=2))


def evaluate(args) -> None:
    p = paths(args)
    policies = {"sft": args.base, **{m: p["dir"] / m for m in METHODS if (p["dir"] / m / "budget.json").exists()}}
    evaluation = evaluate_heldout(args, policies, p["rm"], p["judge"], p["dir"] / "evaluation")
    runs = {m: json.loads((p["dir"] / m / "budget.json").read_text()) for m in policies if m != "sft"}
    results = {"eval_prompts": args.eval_prompts, "runs": runs, "heldout": evaluation.summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    s = evaluation.summary
    print("| method | CPU s (wall s) | judge − SFT | judge win rate | RM − SFT | KL (nats/seq) | length | EOS |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| sft | – | – | – | – | 0 | {s['sft/length']:.1f} | {s['sft/eos_rate']:.0%} |")
    for m, r in runs.items():
        print(f"| {m} | {r['cpu_seconds']:.0f} ({r['wall_seconds']:.0f}) | {s[f'{m}_vs_sft/judge_diff']:+.3f} ± "
              f"{s[f'{m}_vs_sft/judge_diff_stderr']:.3f} | {s[f'{m}_vs_sft/judge_win_rate']:.1%} | "
              f"{s[f'{m}_vs_sft/rm_diff']:+.3f} ± {s[f'{m}_vs_sft/rm_diff_stderr']:.3f} | {s[f'{m}/kl']:.2f} | "
              f"{s[f'{m}/length']:.1f} | {s[f'{m}/eos_rate']:.0%} |")
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "eval"])
    parser.add_argument("--method", choices=METHODS)
    parser.add_argument("--budget", type=float, default=3600, help="run: process CPU seconds (all threads)")
    parser.add_argument("--tag", default="", help="the RM and judge of hh_learning.py curve/judge with this --tag")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--base", type=Path, default=BASE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=384, help="tokens of prompt + response")
    parser.add_argument("--max-iterations", type=int, default=100_000, help="RL: a cap; the budget stops first")
    parser.add_argument("--iterations", type=int, default=100_000, help=argparse.SUPPRESS)  # ppo_config reads it
    parser.add_argument("--ppo-lr", type=float, default=2e-4, help="PPO's and RLOO's LoRA learning rate")
    parser.add_argument("--kl-coef", type=float, default=0.05, help="PPO's and RLOO's β")
    parser.add_argument("--critic-layers", type=int, default=4)
    parser.add_argument("--dpo-prompts", type=int, default=128, help="half-A prompts sampled and ranked for DPO")
    parser.add_argument("--dpo-lr", type=float, default=5e-5, help="DPO's LoRA learning rate (constant after warmup)")
    parser.add_argument("--dpo-beta", type=float, default=0.1)
    parser.add_argument("--dpo-batch-size", type=int, default=4, help="rankings (pairs, for pairwise) per step")
    parser.add_argument("--dpo-epochs", type=float, default=20, help="a cap; the budget stops first")
    parser.add_argument("--eval-prompts", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench/results/loop_methods.json"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the usable CPUs)")
    args = parser.parse_args()
    from training.runtime import set_cpu_threads, usable_cpus

    set_cpu_threads(args.threads or usable_cpus())
    if args.command == "run":
        if not args.method:
            parser.error("run needs --method")
        run(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
