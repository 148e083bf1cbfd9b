"""Issue 10's proof that it learns, part 1: reward models on HH-RLHF from the real base (SmolLM2-135M-Instruct).

    .venv-bench/bin/python bench/hh_learning.py split                 # the fixed hash split (below)
    .venv-bench/bin/python bench/hh_learning.py compare --pairs 600   # ours vs TRL RewardTrainer, same budget
    .venv-bench/bin/python bench/hh_learning.py curve                 # learning curve; the last point is the RM
    .venv-bench/bin/python bench/hh_learning.py judge                 # the independent judge (other half)
    .venv/bin/python bench/hh_learning.py rl                          # PPO on the RM, judged by the judge
    .venv/bin/python bench/hh_learning.py pack|unpack --tag T         # a head-only RM and judge kept in git

The split (both HH test files, by the sha256 record hash of the prompt; fixed forever):
- held out: ``training.data.is_held_out(prompt, 0.15)``: evaluation only, per subset;
- the rest in two halves by hex digits 8–16 of the same hash, mod 2: half A trains the reward model that
  RL optimises, half B trains the judge that only evaluates.

Both trainers get the same token sequences (the chat template, prompt cut from the left at
``--max-length``), the same trainable parameters (the top ``--layers`` transformer layers, the final norm
and a scalar head; everything below is frozen), the same epochs, batch, learning rate, schedule (linear
warmup, cosine to 0), AdamW betas (0.9, 0.999), gradient clipping and seed. Ours runs the frozen layers
once per sequence and caches their output (``RewardConfig.train_layers``); TRL runs them at every step.
Held-out accuracy is computed the same way for both (ties count half), the length heuristics beside it.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training import data, sources  # noqa: E402
from training.config import RewardConfig  # noqa: E402
from training.models import load_tokenizer  # noqa: E402
from training.reward import RewardModel, cache_features, encode_ranking, score_cached, train_reward_model  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "hh-rlhf"
SUBSETS = ("helpful-base", "harmless-base")
WORK = ROOT / "var" / "hh-learn"
BASE = ROOT / "var" / "bases" / "smollm2-135m-instruct"


def half_of(prompt) -> str:
    return "rm" if int(data.record_hash(prompt)[8:16], 16) % 2 == 0 else "judge"


def split(args) -> None:
    args.work.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list] = {"heldout": [], "rm": [], "judge": []}
    for subset in SUBSETS:
        for e in sources.hh_rankings(SHARED / subset / "test.jsonl.gz"):
            parts["heldout" if data.is_held_out(e.prompt, 0.15) else half_of(e.prompt)].append(e)
    counts = {}
    for name, examples in parts.items():
        data.write_jsonl(args.work / f"{name}.jsonl", map(data.to_record, examples))
        counts[name] = {s: sum(e.id.startswith(s) for e in examples) for s in SUBSETS}
    print(json.dumps(counts, indent=2))
    (args.work / "split.json").write_text(json.dumps(counts, indent=2))


def rm_config(args, out_pairs: int) -> RewardConfig:
    steps_per_epoch = -(-out_pairs // args.batch_size)
    frozen = args.layers or args.head_only or args.full
    lora = dict(lora=True, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                lora_targets=args.lora_targets) if not frozen else {}
    return RewardConfig(base=str(args.base), chat_template=True, train_layers=args.layers, max_length=args.max_length,
                        pooling=args.pooling, head_only=args.head_only, weight_decay=args.weight_decay,
                        **lora, batch_size=args.batch_size, learning_rate=args.lr, epochs=args.epochs,
                        warmup_steps=max(1, round(0.05 * steps_per_epoch * args.epochs)), min_lr_ratio=0.0,
                        adam_betas=(0.9, 0.999), max_grad_norm=1.0, seed=args.seed,
                        eval_fraction=0.0, log_every=10, resume=False, device=args.device)


def subset_of(examples: list, pairs: int, seed: int) -> list:
    """The first ``pairs`` of a seeded shuffle: nested, so a larger subset contains the smaller ones."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    return order[:pairs]


class HeldOut:
    """Held-out pairs, their frozen-layer states cached once (they do not change with training). ``name``: the
    split's file in ``--work`` (``judge``: half B, for choosing a configuration without the held-out set)."""

    def __init__(self, args, memo: dict, name: str = "heldout"):
        self.examples = data.read_rankings(args.work / f"{name}.jsonl")
        self.tokenizer = load_tokenizer(args.base)
        config = rm_config(args, 1)
        self.groups = [encode_ranking(self.tokenizer, e, config) for e in self.examples]
        self.features = None
        if args.layers or args.head_only:  # LoRA (--layers 0) changes every layer: nothing to cache
            model = RewardModel.from_pretrained(args.base, args.device)
            model.train_top(args.layers)
            started = time.perf_counter()
            self.features = cache_features(model, self.groups, self.tokenizer.pad_token_id, memo=memo)
            print(f"held-out: {len(self.groups)} pairs cached in {time.perf_counter() - started:.0f} s", flush=True)

    def accuracy(self, model: RewardModel, trl: bool = False) -> dict:
        """``trl``: read each sequence where TRL's sequence classifier does (``trl_reads``)."""
        pad = self.tokenizer.pad_token_id
        seqs = [s for group, *_ in self.groups for s in group]
        starts = [group[3] for group in self.groups for _ in group[0]]
        reads = [trl_reads(s, pad) if trl else len(s) for s in seqs]
        seqs = [s[:n] for s, n in zip(seqs, reads, strict=True)]
        if self.features is None:
            from training.reward import score_encoded

            scores = score_encoded(model, list(zip(seqs, starts, strict=True)), pad)
            return per_subset(self.examples, scores)
        feats = [f[:n] for f, n in zip((f for group in self.features for f in group), reads, strict=True)]
        scores = score_cached(model, seqs, feats, pad, 32, starts=starts)
        return per_subset(self.examples, scores)

    def heuristics(self) -> dict:
        longer = [float(len(r)) for e in self.examples for r in e.responses]
        return {"longer wins": per_subset(self.examples, longer),
                "shorter wins": per_subset(self.examples, [-x for x in longer])}


def trl_reads(seq: list[int], pad_id: int) -> int:
    """How much of a sequence TRL's reward model reads: transformers' sequence classifier pools at the last
    token that is not the pad token, and SmolLM2's pad token is its end-of-turn marker ``<|im_end|>``, with
    which every sequence here ends, so TRL reads the token before it. Causal attention: the prefix up to that
    token, read at its last position by a last-token head, is exactly what TRL's model computes."""
    return max(i for i, t in enumerate(seq) if t != pad_id) + 1


def per_subset(examples: list, scores: list[float]) -> dict:
    hits: dict[str, list[float]] = {}
    for i, e in enumerate(examples):
        chosen, rejected = scores[2 * i], scores[2 * i + 1]
        hit = 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0
        hits.setdefault(e.id.split(":")[0], []).append(hit)
        hits.setdefault("all", []).append(hit)
    return {s: {"accuracy": round(sum(v) / len(v), 4),
                "stderr": round((statistics.fmean(v) * (1 - statistics.fmean(v)) / len(v)) ** 0.5, 4),
                "pairs": len(v)} for s, v in sorted(hits.items())}


def train_ours(args, examples: list, out: Path, memo: dict | None = None) -> tuple[RewardModel, dict]:
    out.mkdir(parents=True, exist_ok=True)
    data.write_jsonl(out / "train.jsonl", map(data.to_record, examples))

    def log(step, total, metrics):
        if "train/loss" in metrics or "cache/sequences" in metrics:
            shown = {k: round(v, 3) for k, v in metrics.items() if k in ("train/loss", "train/accuracy",
                                                                          "cache/sequences")}
            print(f"  ours {step}/{total} {shown}", flush=True)

    result = train_reward_model(rm_config(args, len(examples)), out / "train.jsonl", out, on_log=log,
                                feature_memo=memo)
    model = RewardModel.from_pretrained(out, args.device)
    if args.layers or args.head_only:
        model.train_top(args.layers)
    keep = ("comparisons_per_s", "train_seconds", "cache_seconds", "steps", "tokens", "trainable_parameters")
    return model, {k: result.summary[k] for k in keep}


def train_trl(args, examples: list, out: Path) -> tuple[RewardModel, dict]:
    """TRL's RewardTrainer on the same token sequences, trainable parameters and schedule."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    tokenizer = load_tokenizer(args.base)
    config = rm_config(args, len(examples))
    rows = []
    for e in examples:
        chosen, rejected = encode_ranking(tokenizer, e, config)[0]
        rows.append({"chosen_ids": chosen, "rejected_ids": rejected})
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(args.base), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    split_at = model.config.num_hidden_layers - args.layers
    for name, param in model.named_parameters():
        top = name.startswith("model.layers.") and int(name.split(".")[2]) >= split_at
        param.requires_grad_(top or name.startswith(("model.norm.", "score.")))
    trl_config = TRLRewardConfig(
        output_dir=str(out), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=config.warmup_steps,
        weight_decay=args.weight_decay,
        adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, seed=args.seed, max_length=args.max_length,
        logging_steps=10, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=False, bf16=False, fp16=False,
        gradient_checkpointing=False)
    trainer = RewardTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                            args=trl_config)
    started = time.perf_counter()
    metrics = trainer.train().metrics
    seconds = time.perf_counter() - started
    trainer.save_model(str(out))
    # TRL's model as one of ours (same backbone weights, its bias-free score layer as our head) so that it is
    # scored by the same held-out code; checked against TRL's own forward on a few pairs.
    ours = RewardModel(trainer.model.model)
    with torch.no_grad():
        ours.head.weight.copy_(trainer.model.score.weight)
        ours.head.bias.zero_()
    ours.train_top(args.layers)
    check = [s for e in examples[:4] for s in encode_ranking(tokenizer, e, config)[0]]
    trainer.model.eval()
    with torch.no_grad():
        for seq in check:
            ids = torch.tensor([seq])
            theirs = float(trainer.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0])
            read = ids[:, :trl_reads(seq, tokenizer.pad_token_id)]
            mine = float(ours(read, torch.ones_like(read)))
            assert abs(theirs - mine) < 1e-3, (theirs, mine)
    pairs_seen = len(rows) * args.epochs
    return ours, {"comparisons_per_s": pairs_seen / seconds, "train_seconds": round(seconds, 1),
                  "steps": trainer.state.global_step, "train_loss": metrics.get("train_loss")}


def compare(args) -> None:
    train = subset_of(data.read_rankings(args.work / "rm.jsonl"), args.pairs, args.seed)
    results: dict = {"pairs": len(train), "epochs": args.epochs, "layers": args.layers, "seed": args.seed,
                     "max_length": args.max_length, "batch_size": args.batch_size, "lr": args.lr, "runs": []}
    models = {}
    for repeat in range(args.repeats):  # alternate, so that machine noise hits both
        for name, fn in (("ours", train_ours), ("trl", train_trl)):
            print(f"== {name} (repeat {repeat + 1}) on {len(train)} pairs", flush=True)
            model, run = fn(args, train, args.work / f"compare-{name}")
            results["runs"].append({"trainer": name, "repeat": repeat + 1, **run})
            models[name] = model
    held = HeldOut(args, load_memo(args, "rm")[0])  # scoring only: not part of either trainer's time
    results["heldout"] = {name: held.accuracy(model, trl=name == "trl") for name, model in models.items()}
    results["heldout"].update(held.heuristics())
    for name in ("ours", "trl"):
        rates = [r["comparisons_per_s"] for r in results["runs"] if r["trainer"] == name]
        results[f"{name}_comparisons_per_s_median"] = statistics.median(rates)
    results["speedup"] = results["ours_comparisons_per_s_median"] / results["trl_comparisons_per_s_median"]
    write(args.work / f"compare-{args.pairs}.json", results)


def load_memo(args, half: str) -> tuple[dict, Path, set]:
    """Frozen-layer states by token sequence, kept on disk between runs of ``curve``/``judge`` (and
    experiments) with the same base, ``--layers`` and ``--max-length``. ``compare`` never uses it: its
    timing includes the caching."""
    def path_of(part: str) -> Path:
        return args.work / f"memo-{part}-L{'H' if args.head_only else args.layers}-M{args.max_length}.pt"

    memo: dict = {}
    if path_of(half).exists():
        memo.update(torch.load(path_of(half)))
    inherited = set()  # the other halves' states (the held-out sequences' among them): they stay in their files
    for part in ("rm", "judge"):
        if part != half and path_of(part).exists():
            theirs = {k: v for k, v in torch.load(path_of(part)).items() if k not in memo}
            memo.update(theirs)
            inherited.update(theirs)
    return memo, path_of(half), inherited


def save_memo(memo: dict, path: Path, inherited: set) -> None:
    """The memo but the states that came from the other halves' files."""
    torch.save({k: v for k, v in memo.items() if k not in inherited}, path)


def curve(args, half: str = "rm") -> None:
    examples = data.read_rankings(args.work / f"{half}.jsonl")
    if args.both_halves:  # proof 1 alone: how far more data goes (the judge then shares the RM's data)
        half, examples = "both", examples + data.read_rankings(args.work / f"{'judge' if half == 'rm' else 'rm'}.jsonl")
    sizes = [n for n in args.sizes if n < len(examples)] + [len(examples)]
    memo, memo_path, inherited = load_memo(args, half)
    held = HeldOut(args, memo)
    cached = len(memo)
    results: dict = {"half": half, "layers": args.layers, "head_only": args.head_only, "pooling": args.pooling,
                     "lora_r": args.lora_r, "weight_decay": args.weight_decay,
                     "batch_size": args.batch_size, "epochs": args.epochs,
                     "seed": args.seed, "max_length": args.max_length, "lr": args.lr, "heldout": held.heuristics(),
                     "points": []}
    for n in sizes:
        print(f"== {half}: {n} pairs", flush=True)
        name = f"{half}-{n}" if n < len(examples) else half
        out = tagged(args, name)
        model, run = train_ours(args, subset_of(examples, n, args.seed), out, memo)
        if len(memo) > cached:
            save_memo(memo, memo_path, inherited)
            cached = len(memo)
        results["points"].append({"pairs": n, **run, "heldout": held.accuracy(model)})
        print(json.dumps(results["points"][-1]["heldout"]), flush=True)
        write(tagged(args, f"curve-{half}", ".json"), results)


def unique_prompts(examples: list, seed: int) -> list:
    seen, prompts = set(), []
    for e in examples:
        key = json.dumps(e.prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(data.PPOPrompt(e.prompt, e.id))
    random.Random(seed).shuffle(prompts)  # helpful and harmless mixed, so the first n hold both
    return prompts


def write_prompts(args) -> None:
    """The RL prompts: half A's unique prompts (``prompts.train.jsonl``) and the held-out split's
    (``prompts.heldout.jsonl``), each shuffled by the seed. Deterministic: rewritten identically each time."""
    prompts = {"train": unique_prompts(data.read_rankings(args.work / "rm.jsonl"), args.seed),
               "heldout": unique_prompts(data.read_rankings(args.work / "heldout.jsonl"), args.seed)}
    for side, records in prompts.items():
        data.write_jsonl(args.work / f"prompts.{side}.jsonl", map(data.to_record, records))


def tagged(args, name: str, ext: str = "") -> Path:
    """An experiment's output in the work folder: ``name-TAG`` with ``--tag``, else ``name``."""
    return args.work / f"{name}{f'-{args.tag}' if args.tag else ''}{ext}"


def ppo_config(args, rm: Path, judge: Path, **overrides):
    """PPO's settings in ``rl`` (and in ``loop_methods.py``'s equal-CPU-time comparison): a LoRA actor, a
    critic with its top ``--critic-layers`` trained, 16 prompts per iteration, rollouts as candidates are made
    (64 new tokens, the chat template, stopping at the turn's end, temperature 1)."""
    from training.config import PPOConfig

    settings = dict(policy=str(args.base), reward_model=str(rm), chat_template=True, seed=args.seed,
                    iterations=args.iterations, batch_size=16, minibatch_size=8, ppo_epochs=2,
                    lora=True, lora_r=16, lora_alpha=32, learning_rate=args.ppo_lr,
                    critic_learning_rate=5e-5, critic_train_layers=args.critic_layers, kl_coef=args.kl_coef,
                    max_new_tokens=64, max_prompt_length=args.max_length - 64, temperature=1.0,
                    eval_every=10, eval_prompts=32, judge=str(judge), checkpoint_every=5, device="cpu")
    return PPOConfig(**{**settings, **overrides})


def evaluate_heldout(args, policies: dict[str, Path], rm: Path, judge: Path, out: Path):
    """Each policy sampled once on the first ``--eval-prompts`` held-out prompts, with the same seeds, as the
    candidates are made; scored by the training RM and the judge, with KL to the base (the SFT policy),
    length and EOS rate; every policy paired against the first."""
    from training.config import EvaluateConfig
    from training.evaluate import evaluate_policies

    names = list(policies)
    config = EvaluateConfig(policies=[str(p) for p in policies.values()], names=names, baseline=names[0],
                            reference=str(args.base), reward_model=str(rm), judge=str(judge),
                            max_prompts=args.eval_prompts, max_new_tokens=64, chat_template=True, batch_size=16,
                            max_length=args.max_length, seed=args.seed + 1, device="cpu")
    return evaluate_policies(config, args.work / "prompts.heldout.jsonl", out)


def rl(args) -> None:
    """PPO on half A's prompts against the half-A reward model (``curve``'s last point), from the
    instruct base, which is the SFT policy here (SmolLM2-135M-Instruct is its makers' SFT model); then
    base and PPO policy sampled on held-out prompts with the same seeds, scored by the training RM and by
    the judge (half B, never used in training), with KL to the base, length and EOS rate."""
    from training.ppo import train_ppo

    write_prompts(args)
    rm, judge, out = tagged(args, "rm"), tagged(args, "judge"), tagged(args, "ppo")  # `curve`/`judge`'s, same --tag
    ppo = ppo_config(args, rm, judge)

    def log(step, total, metrics):
        shown = {k.split("/")[-1]: round(v, 3) for k, v in metrics.items()
                 if k in ("ppo/score", "ppo/kl", "ppo/response_length", "eval/score", "eval/judge", "eval/kl")}
        print(f"  ppo {step}/{total} {shown}", flush=True)

    started = time.perf_counter()
    result = train_ppo(ppo, args.work / "prompts.train.jsonl", out, eval_data=args.work / "prompts.heldout.jsonl",
                       on_log=log)
    ppo_seconds = time.perf_counter() - started
    evaluation = evaluate_heldout(args, {"sft": args.base, "ppo": out}, rm, judge, tagged(args, "rl-eval"))
    write(tagged(args, "rl", ".json"), {"ppo": ppo.to_dict(), "ppo_seconds": round(ppo_seconds, 1),
                                        "ppo_summary": result.summary, "heldout": evaluation.summary})


def plot(args) -> None:
    """The learning curve (``curve --both-halves``' JSON, ``--curve``) as an SVG: held-out accuracy per subset
    against training pairs (log scale), with the length heuristics and the 63 % target as dashed lines."""
    import math
    from html import escape

    results = json.loads(args.curve.read_text())
    points = results["points"]
    width, height, left, bottom, top, right = 640, 360, 56, 40, 20, 170
    xs = [math.log2(p["pairs"]) for p in points]
    x_of = lambda v: left + (v - xs[0]) / max(xs[-1] - xs[0], 1e-9) * (width - left - right)  # noqa: E731
    y_of = lambda a: height - bottom - (a - 0.45) / 0.25 * (height - bottom - top)  # noqa: E731  (45–70 %)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>']
    for tick in (0.45, 0.5, 0.55, 0.6, 0.65, 0.7):
        y = y_of(tick)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:.0%}</text>')
    for p, x in zip(points, xs, strict=True):
        parts.append(f'<text x="{x_of(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{p["pairs"]}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">training pairs '
                 f'(log scale)</text>')
    heuristics = results["heldout"]
    colours = {"helpful-base": "#1f77b4", "harmless-base": "#d62728", "all": "#333"}
    lines = [("#1f77b4", heuristics["longer wins"]["helpful-base"]["accuracy"], "longer wins (helpful)"),
             ("#d62728", heuristics["shorter wins"]["harmless-base"]["accuracy"], "shorter wins (harmless)"),
             ("#2ca02c", 0.63, "target on helpful: 63 %")]
    for colour, value, label in lines:
        y = y_of(value)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour}" '
                     f'stroke-dasharray="4 3"/><text x="{width - right + 6}" y="{y + 4:.1f}" '
                     f'fill="{colour}">{escape(label)}</text>')
    for subset, colour in colours.items():
        coords = " ".join(f"{x_of(x):.1f},{y_of(p['heldout'][subset]['accuracy']):.1f}"
                          for p, x in zip(points, xs, strict=True))
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p, x in zip(points, xs, strict=True):
            acc, err = p["heldout"][subset]["accuracy"], p["heldout"][subset]["stderr"]
            parts.append(f'<line x1="{x_of(x):.1f}" x2="{x_of(x):.1f}" y1="{y_of(acc - err):.1f}" '
                         f'y2="{y_of(acc + err):.1f}" stroke="{colour}"/>')
    for row, (subset, colour) in enumerate(colours.items()):  # the legend, top left
        y = top + 6 + 15 * row
        parts.append(f'<line x1="{left + 10}" x2="{left + 30}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="2"/>'
                     f'<text x="{left + 36}" y="{y + 4}">{subset} (held out, ± 1 s.e.)</text>')
    parts.append("</svg>")
    args.out.write_text("\n".join(parts) + "\n")
    print(f"wrote {args.out}")


PACKED = ROOT / "bench" / "assets"


def base_sha256(args) -> str:
    return json.loads((args.base / "PROVENANCE.json").read_text())["files"]["model.safetensors"]


def packed(args, name: str) -> Path:
    return PACKED / f"hh-{name}-{args.tag or 'untagged'}.safetensors"


def pack(args) -> None:
    """A head-only reward model (``--head-only``'s ``rm``/``judge``) differs from the base only in its final norm
    and its head: keep those two (a few KB, in git, ``bench/assets/``) so that a later checkout rebuilds the
    model with ``unpack`` instead of retraining it (about 15 minutes each here)."""
    from safetensors.torch import save_file

    base = RewardModel.from_pretrained(args.base).backbone.state_dict()
    for name in ("rm", "judge"):
        model = RewardModel.from_pretrained(tagged(args, name))
        state = model.backbone.state_dict()
        changed = sorted(k for k in state if not torch.equal(state[k], base[k]))
        if changed != ["norm.weight"]:
            raise SystemExit(f"{name}: not a head-only model; weights differing from the base: {changed[:5]}")
        PACKED.mkdir(parents=True, exist_ok=True)
        out = packed(args, name)
        save_file({"norm.weight": state["norm.weight"].contiguous(),
                   **{f"head.{k}": v.contiguous() for k, v in model.head.state_dict().items()}}, str(out),
                  metadata={"chat_template": str(model.chat_template), "pooling": model.pooling,
                            "base_sha256": base_sha256(args)})
        print(f"wrote {out} ({out.stat().st_size} bytes)")


def unpack(args) -> None:
    """``pack``'s reverse: the RM and the judge of ``--tag`` rebuilt in the work folder from the base and
    ``bench/assets/``; refuses a base other than the one they were trained on."""
    from safetensors import safe_open

    provenance = base_sha256(args)
    tokenizer = load_tokenizer(args.base)
    for name in ("rm", "judge"):
        source = packed(args, name)
        with safe_open(str(source), "pt") as f:
            meta, weights = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        if meta["base_sha256"] != provenance:
            raise SystemExit(f"{source}: trained on another base than {args.base}")
        model = RewardModel.from_pretrained(args.base)
        model.chat_template, model.pooling = meta["chat_template"] == "True", meta["pooling"]
        with torch.no_grad():
            model.backbone.norm.weight.copy_(weights.pop("norm.weight"))
        model.head.load_state_dict({k.removeprefix("head."): v for k, v in weights.items()})
        model.save_pretrained(tagged(args, name), tokenizer)
        print(f"rebuilt {tagged(args, name)} from {source}")


def write(path: Path, results: dict) -> None:
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["split", "compare", "curve", "judge", "rl", "plot", "pack", "unpack"])
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--base", type=Path, default=BASE)
    parser.add_argument("--layers", type=int, default=4, help="top transformer layers trained (of 30); 0: LoRA")
    parser.add_argument("--lora-r", type=int, default=16, help="with --layers 0: LoRA on every layer, this rank")
    parser.add_argument("--head-only", action="store_true",
                        help="train only the head (and final norm) on the frozen model's cached output "
                             "(--layers is then 0)")
    parser.add_argument("--full", action="store_true",
                        help="with --layers 0: fine-tune every weight instead of LoRA")
    parser.add_argument("--lora-targets", default="",
                        help="with --layers 0: the modules LoRA adapts ('' peft's default: q and v; 'all-linear')")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (training and scoring)")
    parser.add_argument("--critic-layers", type=int, default=4, help="rl: the critic's trained top layers")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled weight decay")
    parser.add_argument("--both-halves", action="store_true",
                        help="curve: train on both halves (proof 1's learning curve; no judge can be trained then)")
    parser.add_argument("--pooling", choices=["last", "mean"], default="last",
                        help="what the head reads: the last token, or the mean over the response")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=600, help="compare: the shared training budget")
    parser.add_argument("--repeats", type=int, default=1, help="compare: alternating runs of each trainer")
    parser.add_argument("--sizes", type=int, nargs="*", default=[250, 500, 1000])
    parser.add_argument("--iterations", type=int, default=30, help="rl: PPO iterations of 16 prompts")
    parser.add_argument("--ppo-lr", type=float, default=2e-4, help="rl: the LoRA actor's learning rate")
    parser.add_argument("--kl-coef", type=float, default=0.05, help="rl: β of the per-token KL penalty")
    parser.add_argument("--eval-prompts", type=int, default=200, help="rl: held-out prompts in the final comparison")
    parser.add_argument("--tag", default="", help="curve/judge/rl: an experiment's name (its own outputs)")
    parser.add_argument("--curve", type=Path, help="plot: a curve's JSON")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "hh_rm_learning_curve.svg", help="plot: the SVG")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the usable CPUs)")
    args = parser.parse_args()
    if args.head_only:
        args.layers = 0
    from training.runtime import set_cpu_threads, usable_cpus

    set_cpu_threads(args.threads or usable_cpus())
    if args.command == "split":
        split(args)
    elif args.command == "compare":
        compare(args)
    elif args.command == "rl":
        rl(args)
    elif args.command == "plot":
        plot(args)
    elif args.command in ("pack", "unpack"):
        (pack if args.command == "pack" else unpack)(args)
    else:
        curve(args, "rm" if args.command == "curve" else "judge")


if __name__ == "__main__":
    main()
