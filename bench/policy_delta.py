"""Policies fine-tuned with LoRA, carried as their low-rank difference from the base.

A LoRA policy, once merged, differs from its base only in the adapted matrices, and there by a matrix of
rank at most r: W = W0 + B·A. A full copy of the real base is 517 MB; that difference is about 4 MB. This
keeps a benchmark's trained policies small enough to travel (to an accelerator that has the base, say) and
rebuilds them there exactly enough to evaluate:

    python bench/policy_delta.py pack --base B --out policies.safetensors ours-40=DIR trl-40=DIR ...
    python bench/policy_delta.py unpack --base B --pack policies.safetensors --out FOLDER   # FOLDER/<name>
    python bench/policy_delta.py check --base B --pack policies.safetensors ours-40=DIR     # the error, measured

Each differing matrix is factored by SVD; ``pack`` refuses one whose rank exceeds ``--rank`` (its singular
values past the rank must be below ``--tolerance`` of the largest) and any differing tensor that is not a
matrix, so that what cannot be rebuilt is never silently dropped. Factors are stored in ``--dtype`` (float16
by default, since a difference's own rounding error is far below the KL being measured; ``check`` measures
the rebuilt policy's largest logit error and its KL to the original on real text).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
SKIP = {WEIGHTS, "checkpoints", "samples.jsonl", "metrics.jsonl"}  # what a policy folder needs no copy of


def factor(delta: torch.Tensor, rank: int, tolerance: float, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """delta ≈ a @ b with a of shape (m, rank) and b (rank, n); refuses a delta of higher rank."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    if len(s) > rank and s[rank] > tolerance * s[0]:
        raise SystemExit(f"{name}: the difference has rank above {rank} (singular value {rank + 1} is "
                         f"{float(s[rank] / s[0]):.2e} of the largest); not a merged LoRA of that rank")
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float()


def pack(args) -> None:
    base = load_file(str(args.base / WEIGHTS))
    tensors, meta = {}, {"base_config": (args.base / "config.json").read_text()}
    for name, folder in parse_named(args.policies):
        policy = load_file(str(Path(folder) / WEIGHTS))
        if policy.keys() != base.keys():
            raise SystemExit(f"{name}: its tensors are not the base's ({sorted(policy.keys() ^ base.keys())[:3]})")
        changed = [k for k in policy if not torch.equal(policy[k], base[k])]
        for key in changed:
            delta = policy[key].float() - base[key].float()
            if delta.dim() != 2:
                raise SystemExit(f"{name}: {key} differs from the base and is not a matrix")
            a, b = factor(delta, args.rank, args.tolerance, f"{name}: {key}")
            tensors[f"{name}/{key}/a"], tensors[f"{name}/{key}/b"] = a.to(args.dtype), b.to(args.dtype)
        # The policy's small files (config, tokenizer, template): None where the base holds the same file.
        files = [path for path in sorted(Path(folder).iterdir()) if path.name not in SKIP and path.is_file()]
        meta[name] = json.dumps({path.name: None if same_file(path, args.base) else path.read_text() for path in files})
        print(f"{name}: {len(changed)} matrices differ from the base", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out), metadata=meta)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")


def same_file(path: Path, base: Path) -> bool:
    """A policy's small file (tokenizer, config, template) that the base holds unchanged travels as the base's."""
    return (base / path.name).is_file() and (base / path.name).read_bytes() == path.read_bytes()


def rebuilt_state(base: dict, f, name: str) -> dict:
    state = dict(base)
    for key in {k.split("/")[1] for k in f.keys() if k.startswith(name + "/")}:  # noqa: SIM118
        a, b = f.get_tensor(f"{name}/{key}/a").float(), f.get_tensor(f"{name}/{key}/b").float()
        state[key] = (base[key].float() + a @ b).to(base[key].dtype)
    return state


def unpack(args) -> None:
    base = load_file(str(args.base / WEIGHTS))
    with safe_open(str(args.pack), "pt") as f:
        meta = f.metadata()
        if json.loads(meta["base_config"]) != json.loads((args.base / "config.json").read_text()):
            raise SystemExit(f"{args.pack}: packed against another base than {args.base}")
        for name in (n for n in meta if n != "base_config"):
            out = args.out / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            for file, text in json.loads(meta[name]).items():
                if text is None:
                    shutil.copy2(args.base / file, out / file)
                else:
                    (out / file).write_text(text)
            save_file(rebuilt_state(base, f, name), str(out / WEIGHTS), metadata={"format": "pt"})
            print(f"rebuilt {out}", flush=True)


@torch.no_grad()
def check(args) -> None:
    """The rebuilt policy against the original, on a few sentences: the largest logit difference and the KL
    of the rebuilt next-token distribution from the original's, in nats per token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = load_file(str(args.base / WEIGHTS))
    tokenizer = AutoTokenizer.from_pretrained(str(args.base))
    ids = tokenizer(["Human: How do I bake bread at home? Assistant: Mix flour, water, yeast and salt, then "
                     "knead the dough and let it rise for an hour before baking."], return_tensors="pt").input_ids
    with safe_open(str(args.pack), "pt") as f:
        for name, folder in parse_named(args.policies):
            original = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            logits = original(ids).logits
            original.load_state_dict(rebuilt_state(base, f, name), strict=False)
            again = original(ids).logits
            kl = torch.nn.functional.kl_div(again.log_softmax(-1), logits.log_softmax(-1), log_target=True,
                                            reduction="none").sum(-1).mean()
            print(f"{name}: max |Δlogit| {float((again - logits).abs().max()):.2e}, "
                  f"KL(original ‖ rebuilt) {float(kl):.2e} nats/token over {ids.shape[1]} tokens", flush=True)


def parse_named(items: list[str]) -> list[tuple[str, str]]:
    pairs = [item.split("=", 1) for item in items]
    if any(len(p) != 2 or not p[0] or "/" in p[0] for p in pairs):
        raise SystemExit("give policies as NAME=FOLDER (a name without '/')")
    return [(p[0], p[1]) for p in pairs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["pack", "unpack", "check"])
    parser.add_argument("policies", nargs="*", help="pack, check: NAME=FOLDER")
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--pack", type=Path, help="unpack, check: the packed file")
    parser.add_argument("--out", type=Path, help="pack: the file written; unpack: the folder of policies")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_intermixed_args(argv)
    args.dtype = getattr(torch, args.dtype)
    {"pack": pack, "unpack": unpack, "check": check}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
