"""RLOO side by side in one run (issue 14): ours (``training.rloo.train_rloo``) against TRL's ``RLOOTrainer``,
same base, reward model, prompts, k, seed and settings; time per iteration, then both final policies
evaluated the same way on held-out prompts. Issue 14's targets: ours at least 1.5× faster per iteration,
and at least as good on the judge's score at matched KL.

Run under the bench-only virtualenv (TRL is never a product dependency):

    bench/setup_bench_venv.sh
    .venv-bench/bin/python bench/rloo_vs_trl.py prepare            # prompts and a reward model (below)
    .venv-bench/bin/python bench/rloo_vs_trl.py all --repeats 2 --out bench/results/rloo_vs_trl.json

``prepare`` (once, into ``--work``, default ``var/rloo-vs-trl``): the HH-RLHF test files in
``../shared/data`` split as ``bench/hh_learning.py`` splits them (sha256 record hash of the prompt: 15 %
held out; the rest in halves A and B), then
- ``prompts/train.jsonl``: the unique prompts of half A; ``prompts/heldout.jsonl``: the held-out prompts;
- ``rm/``: a reward model trained by our ``rm`` stage on ``--rm-pairs`` rankings of half A (the top
  ``--rm-layers`` layers of the base and a scalar head, chat template). Its quality does not enter the speed
  comparison: both sides run the same model. The issue's independent judge is ``--judge`` (a reward model
  directory trained on half B); without one the evaluation reports the training RM's score only.

``all``: ``--repeats`` × (ours, TRL), each side in its own fresh process and alternating, ``--iterations``
iterations each; the first iteration of a process is a warm-up and is left out of the timing. One
iteration on both sides = ``--batch-size`` prompts × ``--k`` samples, the reward model's scores, the
sequence-level KL penalty β·Σ(log π − log π_ref) subtracted from each score, leave-one-out advantages and
one optimizer step over all B·k samples (TRL: ``per_device_train_batch_size = B·k``,
``steps_per_generation = 1``, ``num_iterations = 1``; ours: ``minibatch_size = B·k``, ``update_epochs = 1``),
clipped surrogate ε = 0.2, AdamW (0.9, 0.95) at a constant learning rate, gradients clipped at 1, fp32,
no gradient checkpointing, dropout off, the chat template, ``--max-new-tokens`` tokens stopping at the
end of the assistant's turn, temperature 1. Recorded per iteration: wall and process CPU time
(``time.process_time``: all threads), the generation's share, mean score, KL, response length.

Then ``evaluate``: ``training.evaluate.evaluate_policies`` on the first ``--eval-prompts`` held-out prompts
with the base (the reference), the first repeat's final policy of each side: the same sampling, the training
RM's score, the judge's when given, KL to the base in nats per sequence, length and EOS rate, each policy
paired against the base and ours against TRL.

``evaluate --out F`` evaluates again the policies an earlier ``all`` kept (``all`` writes F before its own
evaluation, so a long evaluation can be stopped and redone smaller): ``--eval-prompts``, ``--judge`` and
``--eval-checkpoints 20 40`` (only the policies kept after those iterations) are this call's; the training
settings are F's. At matched KL, iteration 0 (the base: KL 0, gain 0) counts as a point on both sides.

``extend --out F --to N`` continues our side of F's run from its last checkpoint to N iterations (our policy
moves less per iteration than TRL's, so it may need more of them to reach TRL's KL); a later ``evaluate --out
F`` then evaluates every policy kept on both sides (``--device cuda``: on an accelerator;
``bench/rloo_vs_trl_on_gpu.sh`` rebuilds the base, reward models and policies there from small files, with
``bench/policy_delta.py``).

Known difference, not removed: TRL scores a sample by re-rendering (prompt, completion) through the chat
template and reading the classifier at the last non-padding token ("<|im_end|>\\n"); ours reads the reward
model at the response's last token. Both are the same network and head.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ppo_vs_trl import machine, quiet  # noqa: E402  (bench/, beside this file)

SHARED = ROOT.parent / "shared" / "data" / "hh-rlhf"
BASE = ROOT / "var" / "bases" / "smollm2-135m-instruct"
WORK = ROOT / "var" / "rloo-vs-trl"


# --- prepare --------------------------------------------------------------------------------------------

def prepare(args) -> None:
    from hh_learning import SUBSETS, half_of, subset_of, unique_prompts

    from training import data, sources
    from training.config import RewardConfig
    from training.reward import train_reward_model

    work = args.work
    (work / "prompts").mkdir(parents=True, exist_ok=True)
    half_a, held = [], []
    for subset in SUBSETS:
        for e in sources.hh_rankings(SHARED / subset / "test.jsonl.gz"):
            if data.is_held_out(e.prompt, 0.15):
                held.append(e)
            elif half_of(e.prompt) == "rm":
                half_a.append(e)

    # Unique prompts (HH prompts are conversations: lists of turns), helpful and harmless shuffled together.
    train_set, held_set = unique_prompts(half_a, args.seed), unique_prompts(held, args.seed)
    data.write_jsonl(work / "prompts" / "train.jsonl", map(data.to_record, train_set))
    data.write_jsonl(work / "prompts" / "heldout.jsonl", map(data.to_record, held_set))
    if args.rm:  # a reward model of its own (e.g. hh_learning.py's half-A RM): nothing to train
        print(json.dumps({"train_prompts": len(train_set), "heldout_prompts": len(held_set), "rm": str(args.rm)}))
        return
    rankings = work / "rm-train.jsonl"
    data.write_jsonl(rankings, map(data.to_record, subset_of(half_a, args.rm_pairs, args.seed)))
    config = RewardConfig(base=str(args.base), chat_template=True, train_layers=args.rm_layers, max_length=256,
                          batch_size=8, learning_rate=1e-4, epochs=1, warmup_steps=5, min_lr_ratio=0.0,
                          seed=args.seed, eval_fraction=0.0, log_every=10, resume=False, device="cpu")
    result = train_reward_model(config, rankings, work / "rm")
    print(json.dumps({"train_prompts": len(train_set), "heldout_prompts": len(held_set),
                      "rm_pairs": args.rm_pairs, "rm": result.status}, indent=2))


# --- the two sides --------------------------------------------------------------------------------------

def train_prompts(args) -> list:
    """The first ``--n-prompts`` training prompts of at most ``--max-prompt-tokens`` tokens in the chat template.
    With the default, exactly ``--batch-size``, every iteration of both sides rolls out the same prompts (only
    their order differs), so the two sides do the same work: HH prompts range from one line to many turns, and
    different draws would make the times incomparable.

    The length bound keeps both sides on the same text: ours cuts a longer prompt from the left at its
    ``max_prompt_length`` (set to the same bound), and TRL 1.16's RLOOTrainer has no such option and takes it
    whole. 17 % of half A's prompts are longer than 256 tokens (the longest 880), and a batch of them made TRL's
    process grow past this machine's 24 GiB (killed by the kernel at its 5th iteration in session 19)."""
    from training.data import read_ppo_prompts
    from training.models import load_tokenizer

    prompts = read_ppo_prompts(args.work / "prompts" / "train.jsonl")
    if args.max_prompt_tokens:
        tokenizer = load_tokenizer(args.base)

        def tokens(p) -> int:
            messages = p.prompt if isinstance(p.prompt, list) else [{"role": "user", "content": p.prompt}]
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        prompts = [p for p in prompts if tokens(p) <= args.max_prompt_tokens]
    return prompts[: args.n_prompts or args.batch_size]


def run_ours(args) -> dict:
    import torch

    from training import ppo as ppo_module
    from training.config import RLOOConfig
    from training.data import to_record, write_jsonl
    from training.rloo import train_rloo

    config = RLOOConfig(policy=str(args.base), reward_model=str(rm_dir(args)), seed=args.seed,
                        iterations=args.iterations, batch_size=args.batch_size, k=args.k,
                        lora=args.lora_r > 0, lora_r=args.lora_r or 8, lora_alpha=args.lora_alpha,
                        minibatch_size=args.batch_size * args.k, update_epochs=1, loss="clipped", cliprange=0.2,
                        learning_rate=args.learning_rate, adam_betas=(0.9, 0.95), max_grad_norm=1.0,
                        max_new_tokens=args.max_new_tokens, temperature=1.0, chat_template=True,
                        max_prompt_length=args.max_prompt_tokens or 256, kl_coef=args.beta, kl_penalty="sequence",
                        sample_every=10**6,
                        checkpoint_every=args.save_every or 10**6, resume=False, device="cpu")
    iterations, marks = [], []
    cpu = {"generation": 0.0}
    real_sample = ppo_module.sample_responses

    def timed_sample(*a, **kw):  # CPU time of generation; train_rloo's code is untouched
        start = time.process_time()
        try:
            return real_sample(*a, **kw)
        finally:
            cpu["generation"] += time.process_time() - start

    ppo_module.sample_responses = timed_sample

    def on_log(step: int, total: int, metrics: dict[str, float]) -> None:
        if "rloo/score" not in metrics:
            return
        marks.append((time.perf_counter(), time.process_time()))
        iterations.append({"warmup": len(marks) == 2, "total": marks[-1][0] - marks[-2][0],
                           "cpu_total": marks[-1][1] - marks[-2][1],
                           "generation": metrics["time/generation"], "cpu_generation": cpu["generation"],
                           "score": metrics["rloo/score"], "kl": metrics["rloo/kl"],
                           "response_length": metrics["rloo/response_length"], "eos_rate": metrics["rloo/eos_rate"]})
        cpu["generation"] = 0.0

    out = Path(args.save) if args.save else Path(tempfile.mkdtemp()) / "out"
    prompts = Path(tempfile.mkdtemp()) / "prompts.jsonl"
    write_jsonl(prompts, map(to_record, train_prompts(args)))
    # With --save-every, the run goes in segments that each end at a checkpoint and resume from it (a resumed
    # run equals an uninterrupted one); each segment's policy is kept as SAVE-<iteration>. Each segment's first
    # iteration (models loaded anew) is a warm-up.
    # --resume: continue the run kept in --save from its last checkpoint (a resumed run equals an uninterrupted
    # one, and the learning rate is constant), so that only the iterations past it are run.
    done = json.loads((out / "summary.json").read_text())["iterations"] if args.resume else 0
    ends = [end for end in checkpoints(args) if end > done]
    for end in ends:
        marks[:] = [(time.perf_counter(), time.process_time())]
        train_rloo(replace(config, iterations=end, resume=bool(done) or end != ends[0]), prompts, out, on_log=on_log)
        if args.save and args.save_every:
            shutil.copytree(out, f"{args.save}-{end}", ignore=shutil.ignore_patterns("checkpoints"))
    return {"side": "ours", "iterations": iterations, "threads": torch.get_num_threads(), "resumed_at": done,
            "policy": str(out) if args.save else None, "peak_rss_gib": peak_rss_gib()}


def peak_rss_gib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # Linux: KiB


def checkpoints(args, iterations: int | None = None) -> list[int]:
    """The iterations after which a policy is kept: every ``--save-every`` and the last."""
    iterations = iterations or args.iterations
    every = args.save_every or iterations
    return sorted({*range(every, iterations + 1, every), iterations})


def evaluated(args, side: str) -> list[int]:
    """A side's kept policies that are evaluated: ``--eval-checkpoints`` where given, else every one. A side
    that ``extend`` continued has kept more than ``--iterations``."""
    kept = checkpoints(args, getattr(args, "iterations_by_side", {}).get(side))
    return sorted(set(args.eval_checkpoints) & set(kept)) if args.eval_checkpoints else kept


def rm_dir(args) -> Path:
    return args.rm or args.work / "rm"


def trl_reward_model(args, tokenizer):
    """Our reward model as TRL takes one. ``--trl-reward classifier``: AutoModelForSequenceClassification on the
    RM's backbone, score = our head (TRL's own path; a last-token RM only). ``ours``: a reward function that
    scores (prompt, completion text) with our RewardModel as our side does (any pooling; the completion is
    re-tokenized from its text)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from training.models import load_tokenizer
    from training.reward import HEAD_FILE, RewardModel, score_pairs

    if args.trl_reward == "ours":
        model, rm_tokenizer = RewardModel.from_pretrained(rm_dir(args)).eval(), load_tokenizer(str(rm_dir(args)))

        def our_reward_model(prompts, completions, **kwargs) -> list[float]:
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return score_pairs(model, rm_tokenizer, list(zip(prompts, texts, strict=True)),
                               max_length=args.max_length)
        return our_reward_model
    model = AutoModelForSequenceClassification.from_pretrained(str(rm_dir(args)), num_labels=1, dtype=torch.float32)
    head = load_file(str(rm_dir(args) / HEAD_FILE))
    with torch.no_grad():
        model.score.weight.copy_(head["weight"].view_as(model.score.weight))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def run_trl(args) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from training.models import load_tokenizer

    tokenizer = load_tokenizer(args.base)
    prompts = [p.prompt if isinstance(p.prompt, list) else [{"role": "user", "content": p.prompt}]
               for p in train_prompts(args)]
    dataset = Dataset.from_dict({"prompt": prompts})
    policy = AutoModelForCausalLM.from_pretrained(str(args.base), dtype=torch.float32)
    reward = trl_reward_model(args, tokenizer)
    n = args.batch_size * args.k
    config = RLOOConfig(
        output_dir=tempfile.mkdtemp(), report_to="none", save_strategy="no", use_cpu=True, bf16=False, seed=args.seed,
        per_device_train_batch_size=n, gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        num_generations=args.k, max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0,
        beta=args.beta, epsilon=0.2, learning_rate=args.learning_rate, lr_scheduler_type="constant",
        warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=args.iterations, logging_steps=1, disable_tqdm=True, gradient_checkpointing=False,
        disable_dropout=True, normalize_advantages=False)
    events: dict[str, float] = {}
    iterations: list[dict] = []
    logged: list[dict] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            events["step_end"], events["cpu_step_end"] = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **kw):
            now, cpu_now = time.perf_counter(), time.process_time()
            iterations.append({"total": now - events["step_end"], "cpu_total": cpu_now - events["cpu_step_end"],
                               "generation": events.pop("generation", float("nan")),
                               "cpu_generation": events.pop("cpu_generation", float("nan"))})
            events["step_end"], events["cpu_step_end"] = now, cpu_now

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and any(key.startswith("rewards/") or key == "reward" for key in logs):
                logged.append(dict(logs))

    class Keep(TrainerCallback):  # --save-every: the policy (LoRA merged into a copy) as SAVE-<step>
        def on_step_end(self, a, state, control, model=None, **kw):
            if args.save and args.save_every and state.global_step in checkpoints(args):
                kept = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
                kept.save_pretrained(f"{args.save}-{state.global_step}")
                tokenizer.save_pretrained(f"{args.save}-{state.global_step}")

    peft_config = None
    if args.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM")
    trainer = RLOOTrainer(model=policy, reward_funcs=[reward], args=config, train_dataset=dataset,
                          processing_class=tokenizer,
                          reward_processing_classes=[tokenizer if args.trl_reward == "classifier" else None],
                          callbacks=[Timer(), Keep()], peft_config=peft_config)
    generate = getattr(trainer, "_generate", None)
    if generate is not None:  # the generation's share, from outside: TRL's code is untouched
        def timed_generate(*a, **kw):
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return generate(*a, **kw)
            finally:
                events["generation"] = events.get("generation", 0.0) + time.perf_counter() - start
                events["cpu_generation"] = events.get("cpu_generation", 0.0) + time.process_time() - cpu_start
        trainer._generate = timed_generate
    trainer.train()
    for row, logs in zip(iterations, logged, strict=False):
        row.update(score=logs.get("reward"), kl=logs.get("kl"),
                   response_length=logs.get("completions/mean_length"),
                   eos_rate=1.0 - logs["completions/clipped_ratio"] if "completions/clipped_ratio" in logs else None)
    saved = None
    if args.save:
        model = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
        saved = args.save
    return {"side": "trl", "trl_version": trl.__version__, "iterations": iterations,
            "threads": torch.get_num_threads(), "policy": saved, "peak_rss_gib": peak_rss_gib()}


def clear_saved(save: str | None) -> None:
    """An earlier run's kept policies (SAVE and SAVE-<iteration>) go first: a rerun replaces them, so that
    copying a segment's policy never meets an old one and an evaluation never reads a stale one."""
    if save:
        for stale in [Path(save), *Path(save).parent.glob(Path(save).name + "-*")]:
            shutil.rmtree(stale, ignore_errors=True)


def child(args) -> None:
    quiet()
    if not args.resume:
        clear_saved(args.save)
    result = run_ours(args) if args.command == "ours" else run_trl(args)
    print("RESULT " + json.dumps(result))


# --- the comparison -------------------------------------------------------------------------------------

def timed(run: dict) -> list[dict]:
    """A run's iterations but its warm-ups: each process's (or, for ours with --save-every, segment's) first."""
    return [it for i, it in enumerate(run["iterations"]) if not it.get("warmup", i == 0)]


def summarize(runs: list[dict], side: str) -> dict:
    rows = [it for run in runs if run["side"] == side for it in timed(run)]  # warm-ups left out
    if not rows:
        return {}
    out = {key: statistics.median(r[key] for r in rows)
           for key in ("total", "cpu_total", "generation", "cpu_generation")}
    out["run_medians"] = [round(statistics.median(it["total"] for it in timed(run)), 3)
                          for run in runs if run["side"] == side]
    out["cpu_run_medians"] = [round(statistics.median(it["cpu_total"] for it in timed(run)), 3)
                              for run in runs if run["side"] == side]
    out["timed_iterations"] = len(rows)
    for key in ("score", "kl", "response_length", "eos_rate"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[f"mean_{key}_during_training"] = statistics.mean(values)
    return out


def side_flags(args) -> list[str]:
    return ["--base", str(args.base), "--work", str(args.work), "--iterations", str(args.iterations),
            "--batch-size", str(args.batch_size), "--k", str(args.k), "--n-prompts", str(args.n_prompts),
            "--max-new-tokens", str(args.max_new_tokens), "--max-length", str(args.max_length),
            "--max-prompt-tokens", str(args.max_prompt_tokens),
            "--beta", str(args.beta), "--learning-rate", str(args.learning_rate), "--seed", str(args.seed),
            "--rm", str(rm_dir(args)), "--trl-reward", args.trl_reward, "--lora-r", str(args.lora_r),
            "--lora-alpha", str(args.lora_alpha), "--save-every", str(args.save_every)]


def run_side(side: str, flags: list[str]) -> tuple[dict, str]:
    """One side in a fresh process: its RESULT, or the end of its output when it failed."""
    proc = subprocess.run([sys.executable, __file__, side, *flags], capture_output=True, text=True, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        return {}, (proc.stderr or proc.stdout)[-4000:]
    return json.loads(line[len("RESULT "):]), ""


def run_all(args) -> dict:
    result = {"command": " ".join(sys.argv), "machine": machine(), "runs": [],
              "settings": {k: str(v) for k, v in vars(args).items()}}
    policies: dict[str, str] = {}
    for repeat in range(args.repeats):
        for side in ("ours", "trl") if repeat % 2 == 0 else ("trl", "ours"):
            flags = side_flags(args)
            if repeat == 0:
                policies[side] = str(args.work / "policies" / side)
                flags += ["--save", policies[side]]
            started = time.perf_counter()
            run, error = run_side(side, flags)
            if error:
                result["runs"].append({"side": side, "error": error})
                print(f"{side} run {repeat} failed:\n{error}", file=sys.stderr)
                policies.pop(side, None)
                continue
            run["wall_s"] = round(time.perf_counter() - started, 1)
            run["loadavg_after"] = os.getloadavg()[0]
            result["runs"].append(run)
            its = timed(run)
            print(f"repeat {repeat} {side}: median iteration {statistics.median(i['total'] for i in its):.2f} s "
                  f"(CPU {statistics.median(i['cpu_total'] for i in its):.2f} s, generation "
                  f"{statistics.median(i['generation'] for i in its):.2f} s), wall {run['wall_s']} s", flush=True)
    ok = [r for r in result["runs"] if "error" not in r]
    result["ours"], result["trl"] = summarize(ok, "ours"), summarize(ok, "trl")
    if result["ours"] and result["trl"]:
        result["ratio_trl_to_ours"] = {
            key: round(result["trl"][key] / result["ours"][key], 3) for key in ("total", "cpu_total")}
        result["ratio_trl_to_ours"]["per_repeat"] = [
            round(t / o, 3) for o, t in zip(result["ours"]["run_medians"], result["trl"]["run_medians"], strict=False)]
        result["at_least_1_5x_faster"] = result["ratio_trl_to_ours"]["total"] >= 1.5
    result["policies"] = policies
    write(args, result)  # the timing is kept even if the evaluation below is cut short
    if args.eval_prompts and {"ours", "trl"} <= policies.keys():
        result["evaluation"] = evaluate(args, policies)
        write(args, result)
    print(json.dumps({k: result.get(k) for k in ("ours", "trl", "ratio_trl_to_ours", "evaluation")}, indent=2))
    return result


def write(args, result: dict) -> None:
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


TRAINING = ("iterations", "batch_size", "k", "n_prompts", "max_new_tokens", "max_prompt_tokens", "beta",
            "learning_rate", "seed", "lora_r", "lora_alpha", "max_length", "save_every")


def restore(args, result: dict) -> dict[str, str]:
    """An earlier ``all``'s training settings, as F records them, in place of this call's."""
    settings = result["settings"]
    for key in TRAINING:
        setattr(args, key, type(getattr(args, key))(settings[key]))
    args.base, args.trl_reward = Path(settings["base"]), settings["trl_reward"]
    args.rm = Path(settings["rm"]) if settings.get("rm") not in (None, "None") else None
    args.iterations_by_side = result.get("iterations_by_side", {})
    return result.get("policies") or {side: str(args.work / "policies" / side) for side in ("ours", "trl")}


def extend(args) -> None:
    """``extend --out F --to N``: continue our side of F's run from its last kept checkpoint to N iterations,
    keeping a policy every F's ``--save-every`` (so that our policies' KL can reach TRL's, for the comparison at
    matched KL); the new iterations' timings are added to F as a run of their own."""
    result = json.loads(args.out.read_text())
    policies = restore(args, result)
    if args.to <= args.iterations_by_side.get("ours", args.iterations):
        raise SystemExit(f"--to {args.to}: ours already ran that far")
    args.iterations = args.to
    run, error = run_side("ours", [*side_flags(args), "--save", policies["ours"], "--resume"])
    if error:
        raise SystemExit(f"ours failed:\n{error}")
    its = timed(run)
    median, cpu = (statistics.median(i[key] for i in its) for key in ("total", "cpu_total"))
    print(f"ours, iterations {run['resumed_at'] + 1}-{args.to}: median iteration {median:.2f} s (CPU {cpu:.2f} s)")
    result.setdefault("extended_runs", []).append({**run, "command": " ".join(sys.argv)})
    result.setdefault("iterations_by_side", {})["ours"] = args.to
    write(args, result)


def evaluate_again(args) -> None:
    """``evaluate --out F``: (re)evaluate the policies an earlier ``all`` (and ``extend``) kept, as F records them,
    with this call's ``--eval-prompts``/``--judge``/``--device``; the training settings are F's own."""
    result = json.loads(args.out.read_text())
    policies = restore(args, result)
    result["evaluation"] = evaluate(args, policies)
    result["evaluation_command"] = " ".join(sys.argv)
    write(args, result)
    print(json.dumps(result["evaluation"], indent=2))


def evaluate(args, policies: dict[str, str]) -> dict:
    from training.config import EvaluateConfig
    from training.evaluate import evaluate_policies

    # With --save-every: every kept policy of both sides, so that they can be compared at matched KL.
    kept = {"base": str(args.base)}
    for side in ("ours", "trl"):
        kept.update({f"{side}-{n}": f"{policies[side]}-{n}" for n in evaluated(args, side)} if args.save_every
                    else {side: policies[side]})
    config = EvaluateConfig(policies=list(kept.values()), names=list(kept), baseline="base", reference=str(args.base),
                            reward_model=str(rm_dir(args)), judge=str(args.judge) if args.judge else "",
                            max_prompts=args.eval_prompts, samples=args.eval_samples,
                            max_new_tokens=args.max_new_tokens, max_length=args.max_length, chat_template=True,
                            batch_size=args.eval_batch_size, seed=args.seed + 1, device=args.device)
    summary = evaluate_policies(config, args.work / "prompts" / "heldout.jsonl", args.work / "evaluation").summary
    return {**summary, "at_matched_kl": matched_kl(args, summary)} if args.save_every else summary


def matched_kl(args, s: dict) -> dict:
    """Both sides' kept policies by KL to the base, and at each TRL policy's KL, ours' judge gain over the base
    interpolated linearly between our two policies whose KL brackets it (the score, where there is no judge)."""
    key = "judge_diff" if args.judge else "rm_diff"
    # Iteration 0 is the base itself on both sides: KL 0, gain 0.
    points = {side: sorted([(0.0, 0.0, 0)] + [(s[f"{side}-{n}/kl"], s[f"{side}-{n}_vs_base/{key}"], n)
                                              for n in evaluated(args, side)]) for side in ("ours", "trl")}
    rows = []
    for kl, gain, n in (point for point in points["trl"] if point[2]):
        ours = points["ours"]
        pair = next(((a, b) for a, b in zip(ours, ours[1:], strict=False) if a[0] <= kl <= b[0]), None)
        mine = None if pair is None else pair[0][1] + (pair[1][1] - pair[0][1]) * (kl - pair[0][0]) / max(
            pair[1][0] - pair[0][0], 1e-9)
        rows.append({"trl_iteration": n, "kl": kl, f"trl_{key}": gain, f"ours_{key}_interpolated": mine,
                     "ours_minus_trl": None if mine is None else mine - gain})
    for side, pts in points.items():
        print(f"{side}: " + ", ".join(f"it {n}: KL {kl:.2f}, {key} {g:+.3f}" for kl, g, n in pts), flush=True)
    return {"measure": key, "points": points, "at_trl_kl": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["prepare", "all", "evaluate", "extend", "ours", "trl"])
    parser.add_argument("--base", type=Path, default=BASE, help="the policy's start and the KL reference")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--rm-pairs", type=int, default=400, help="prepare: half-A rankings the reward model sees")
    parser.add_argument("--rm-layers", type=int, default=4, help="prepare: top layers the reward model trains")
    parser.add_argument("--judge", type=Path, help="an independent reward model (trained on half B)")
    parser.add_argument("--iterations", type=int, default=6, help="per process; the first is a warm-up")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per iteration")
    parser.add_argument("--k", type=int, default=4, help="samples per prompt")
    parser.add_argument("--n-prompts", type=int, default=0,
                        help="training prompts (the first N); 0: --batch-size, the same prompts every iteration")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-prompt-tokens", type=int, default=256,
                        help="training prompts longer than this in the chat template are left out (both sides)")
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--learning-rate", type=float, default=1e-6)
    parser.add_argument("--eval-prompts", type=int, default=0,
                        help="evaluate the first repeat's policies on this many held-out prompts (0: none)")
    parser.add_argument("--eval-samples", type=int, default=1)
    parser.add_argument("--eval-checkpoints", type=int, nargs="*",
                        help="with --save-every: evaluate only the policies kept after these iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rm", type=Path, help="the reward model of both sides (default: prepare's, WORK/rm)")
    parser.add_argument("--trl-reward", choices=["classifier", "ours"], default="classifier",
                        help="TRL's reward: the RM as a sequence classifier (last-token RMs), or a function "
                             "scoring with our RewardModel (any pooling)")
    parser.add_argument("--lora-r", type=int, default=0, help="LoRA rank on both sides (q and v projections); "
                                                               "0: full fine-tuning")
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512, help="tokens the reward models read")
    parser.add_argument("--save-every", type=int, default=0,
                        help="keep both sides' policies every N iterations (first repeat) and evaluate them all, "
                             "for the comparison at matched KL")
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--to", type=int, default=0, help="extend: our side's new number of iterations")
    parser.add_argument("--device", default="cpu", help="evaluate: where the evaluation runs (cpu, cuda, auto)")
    parser.add_argument("--eval-batch-size", type=int, default=16, help="evaluate: prompts generated at once")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args)
    elif args.command == "all":
        run_all(args)
    elif args.command == "evaluate":
        evaluate_again(args)
    elif args.command == "extend":
        extend(args)
    else:
        child(args)


if __name__ == "__main__":
    main()
