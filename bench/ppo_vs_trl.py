"""PPO iteration time, side by side in one run: ours (training.ppo.train_ppo) vs TRL 1.12.0's PPOTrainer
(trl.experimental.ppo, the last TRL release with PPO), each iteration split into generation, scoring and
training. Issue 5's target: ours at least 2x faster per iteration.

Run under the bench-only virtualenv (TRL is never a product dependency):

    bench/setup_trl112_venv.sh
    .venv-trl112/bin/python bench/ppo_vs_trl.py all --sft var/ppo-e2e/sft --rm var/ppo-e2e/rm \
        --prompts var/ppo-e2e/prompts/train.jsonl --repeats 3 --out bench/results/ppo/ppo_vs_trl.json

Same models on both sides: the policy and the frozen reference are the SFT model; the reward model and
the critic/value model are the RM's backbone (the SFT transformer after RM training) with its scalar head.
TRL needs AutoModelForSequenceClassification-style reward/value models, so they are GPT2ForSequenceClassification
loaded from the RM directory with ``score.weight`` = our head's weight (TRL's score layer has no bias; the
bias is a constant shift of every score and costs nothing either way). Same prompts (the same token ids,
cut from the left to --max-prompt-length), batch size, response length, temperature, PPO epochs and
minibatches (one optimizer step per minibatch on both sides), fp32, torch's default threads.

Each side runs in its own fresh process, interleaved (ours, TRL, ours, TRL, ...), for --iterations
iterations; the first iteration of each process is a warm-up and is left out. Phases:
- ours: the stage's own ``time/generation``, ``time/scoring``, ``time/training`` per iteration; the
  iteration total is the time between successive progress callbacks.
- TRL: measured from outside without editing TRL: ``batch_generation`` (generation), from its end to the
  first gradient-enabled forward (scoring: reference, value and reward forwards, reward shaping, GAE,
  whitening), from there to ``on_step_end`` (training: PPO epochs plus its per-step metrics); the
  iteration total is the time between successive ``on_step_end`` callbacks (so it also holds TRL's
  gc.collect() and data loading, reported as "other").
Both wall time and process CPU time (``time.process_time``: all of the process's threads) are recorded per
phase. On a shared machine wall time mostly measures the other tenants; CPU time is the steadier measure
of the work each implementation does (ours: CPU time inside ``sample_responses``, the rest of
``make_rollout``, and ``ppo_update``, patched as module globals so the stage's code is untouched).
"""
from __future__ import annotations

import argparse
import json
import os
import platform as std_platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHASES = ("generation", "scoring", "training")


def quiet() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import warnings

    warnings.filterwarnings("ignore")


def prompt_ids(args) -> list[list[int]]:
    """The benchmark's prompts as token ids, exactly as our stage encodes them (plain format, cut from the left)."""
    from training.data import read_ppo_prompts
    from training.encoding import encode_prompt, fit_prompt
    from training.models import load_tokenizer

    tokenizer = load_tokenizer(args.sft)
    prompts = read_ppo_prompts(args.prompts)[: args.n_prompts]
    return [fit_prompt(encode_prompt(tokenizer, p.prompt), args.max_prompt_length, "left") for p in prompts]


def run_ours(args) -> dict:
    from training.config import PPOConfig
    from training.data import read_ppo_prompts, to_record, write_jsonl
    from training.ppo import train_ppo

    config = PPOConfig(policy=str(args.sft), reward_model=str(args.rm), seed=args.seed, iterations=args.iterations,
                       batch_size=args.batch_size, minibatch_size=args.minibatch_size, ppo_epochs=args.ppo_epochs,
                       learning_rate=args.learning_rate, critic_learning_rate=args.learning_rate,
                       max_new_tokens=args.response_length, temperature=args.temperature,
                       max_prompt_length=args.max_prompt_length, kl_coef=args.kl_coef, sample_every=10**6,
                       checkpoint_every=10**6, resume=False, device="cpu")
    from training import ppo

    iterations, marks, cpu = [], [(time.perf_counter(), time.process_time())], dict.fromkeys(PHASES, 0.0)

    def cpu_timed(phase: str, function):
        # Process CPU time per phase (robust to other tenants, unlike wall time): patched module globals,
        # so train_ppo's code is untouched. Generation is inside make_rollout and is subtracted from scoring.
        def wrapper(*a, **kw):
            start = time.process_time()
            try:
                return function(*a, **kw)
            finally:
                cpu[phase] += time.process_time() - start
        return wrapper

    ppo.sample_responses = cpu_timed("generation", ppo.sample_responses)
    ppo.make_rollout = cpu_timed("scoring", ppo.make_rollout)
    ppo.ppo_update = cpu_timed("training", ppo.ppo_update)

    def on_log(step: int, total: int, metrics: dict[str, float]) -> None:
        marks.append((time.perf_counter(), time.process_time()))
        iterations.append({"total": marks[-1][0] - marks[-2][0], **{p: metrics[f"time/{p}"] for p in PHASES},
                           "cpu_total": marks[-1][1] - marks[-2][1], "cpu_generation": cpu["generation"],
                           "cpu_scoring": cpu["scoring"] - cpu["generation"], "cpu_training": cpu["training"],
                           "response_length": metrics["ppo/response_length"], "eos_rate": metrics["ppo/eos_rate"],
                           "score": metrics["ppo/score"], "kl": metrics["ppo/kl"]})
        cpu.update(dict.fromkeys(PHASES, 0.0))

    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        write_jsonl(prompts, map(to_record, read_ppo_prompts(args.prompts)[: args.n_prompts]))
        train_ppo(config, prompts, Path(tmp) / "out", on_log=on_log)
    return {"side": "ours", "iterations": iterations}


def trl_models(args):
    """Policy, reference, reward and value models for TRL, all from our SFT and RM directories."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from training.reward import HEAD_FILE

    policy = AutoModelForCausalLM.from_pretrained(str(args.sft), dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(str(args.sft), dtype=torch.float32)
    head = load_file(str(Path(args.rm) / HEAD_FILE))

    def scalar_model():
        model = AutoModelForSequenceClassification.from_pretrained(str(args.rm), num_labels=1, dtype=torch.float32)
        with torch.no_grad():
            model.score.weight.copy_(head["weight"])
        return model

    return policy, ref, scalar_model(), scalar_model()


def run_trl(args) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as module

    from training.models import load_tokenizer

    tokenizer = load_tokenizer(args.sft)
    tokenizer.padding_side = "left"  # TRL expects left-padded queries
    ids = prompt_ids(args)
    dataset = Dataset.from_dict({"input_ids": ids})
    policy, ref, reward, value = trl_models(args)
    events: dict[str, float] = {}
    iterations: list[dict] = []

    real_generation, real_forward = module.batch_generation, module.forward

    def timed_generation(*a, **kw):
        events["generation_start"], events["cpu_generation_start"] = time.perf_counter(), time.process_time()
        out = real_generation(*a, **kw)
        events["generation_end"], events["cpu_generation_end"] = time.perf_counter(), time.process_time()
        return out

    def timed_forward(model, *a, **kw):
        if torch.is_grad_enabled() and "training_start" not in events:
            events["training_start"], events["cpu_training_start"] = time.perf_counter(), time.process_time()
        return real_forward(model, *a, **kw)

    module.batch_generation, module.forward = timed_generation, timed_forward

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            events["step_end"], events["cpu_step_end"] = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **kw):
            now, cpu_now = time.perf_counter(), time.process_time()
            e = events
            iterations.append({"total": now - e["step_end"],
                               "generation": e["generation_end"] - e["generation_start"],
                               "scoring": e["training_start"] - e["generation_end"],
                               "training": now - e["training_start"],
                               "cpu_total": cpu_now - e["cpu_step_end"],
                               "cpu_generation": e["cpu_generation_end"] - e["cpu_generation_start"],
                               "cpu_scoring": e["cpu_training_start"] - e["cpu_generation_end"],
                               "cpu_training": cpu_now - e["cpu_training_start"]})
            events.clear()
            events["step_end"], events["cpu_step_end"] = now, cpu_now

    logged: list[dict] = []

    class Metrics(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "objective/scores" in logs:
                logged.append(logs)

    config = PPOConfig(
        output_dir=tempfile.mkdtemp(), report_to="none", save_strategy="no", use_cpu=True, seed=args.seed,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        num_mini_batches=args.batch_size // args.minibatch_size, num_ppo_epochs=args.ppo_epochs,
        local_rollout_forward_batch_size=args.batch_size, total_episodes=args.batch_size * args.iterations,
        response_length=args.response_length, temperature=args.temperature, stop_token="eos",
        kl_coef=args.kl_coef, learning_rate=args.learning_rate, lr_scheduler_type="constant",
        num_sample_generations=0, logging_steps=1, disable_tqdm=True, bf16=False)
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=dataset, eval_dataset=dataset.select(range(4)),
                         callbacks=[Timer(), Metrics()])
    trainer.train()
    eos = tokenizer.eos_token_id
    for row, logs in zip(iterations, logged, strict=True):
        # TRL logs the EOS count over the padded [B, T] responses; without a response-length metric we
        # only report its score and KL.
        row.update(score=logs["objective/scores"], kl=logs["objective/kl"],
                   eos_rate=logs["val/num_eos_tokens"] / args.batch_size)
    return {"side": "trl", "trl_version": trl.__version__, "iterations": iterations, "eos_token": eos}


def child(args) -> None:
    quiet()
    result = run_ours(args) if args.command == "ours" else run_trl(args)
    print("RESULT " + json.dumps(result))


def summarize(runs: list[dict], side: str) -> dict:
    rows = [it for run in runs if run["side"] == side for it in run["iterations"][1:]]  # drop warm-ups
    keys = ("total", *PHASES)
    out = {k: statistics.median(r[k] for r in rows) for k in keys + tuple(f"cpu_{k}" for k in keys)}
    out["other"] = statistics.median(r["total"] - sum(r[p] for p in PHASES) for r in rows)
    out["cpu_run_medians"] = [round(statistics.median(it["cpu_total"] for it in run["iterations"][1:]), 3)
                              for run in runs if run["side"] == side]
    out["run_medians"] = [round(statistics.median(it["total"] for it in run["iterations"][1:]), 3)
                          for run in runs if run["side"] == side]
    out["timed_iterations"] = len(rows)
    for key in ("eos_rate", "response_length", "score", "kl"):
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = statistics.mean(values)
    return out


def machine() -> dict:
    import torch
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
            "transformers": transformers.__version__, "cpus": os.cpu_count(), "platform": std_platform.platform()}
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        pass
    info["loadavg_start"] = os.getloadavg()
    return info


def run_all(args) -> dict:
    base = [sys.executable, __file__]
    flags = ["--sft", str(args.sft), "--rm", str(args.rm), "--prompts", str(args.prompts),
             "--iterations", str(args.iterations), "--batch-size", str(args.batch_size),
             "--minibatch-size", str(args.minibatch_size), "--ppo-epochs", str(args.ppo_epochs),
             "--response-length", str(args.response_length), "--max-prompt-length", str(args.max_prompt_length),
             "--temperature", str(args.temperature), "--kl-coef", str(args.kl_coef),
             "--learning-rate", str(args.learning_rate), "--n-prompts", str(args.n_prompts), "--seed", str(args.seed)]
    result = {"command": " ".join(sys.argv), "machine": machine(), "runs": [], "loadavg": [],
              "settings": {k: str(v) for k, v in vars(args).items()}}
    for repeat in range(args.repeats):
        for side in ("ours", "trl"):
            started = time.perf_counter()
            proc = subprocess.run(base + [side] + flags, capture_output=True, text=True, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                result["runs"].append({"side": side, "error": (proc.stderr or proc.stdout)[-4000:]})
                print(f"{side} run {repeat} failed:\n{(proc.stderr or proc.stdout)[-4000:]}", file=sys.stderr)
                continue
            run = json.loads(line[len("RESULT "):])
            run["wall_s"] = round(time.perf_counter() - started, 1)
            result["runs"].append(run)
            result["loadavg"].append(os.getloadavg()[0])
            its = run["iterations"][1:]
            print(f"repeat {repeat} {side}: median iteration {statistics.median(i['total'] for i in its):.3f}s "
                  f"(cpu {statistics.median(i['cpu_total'] for i in its):.3f}s) "
                  f"(gen {statistics.median(i['generation'] for i in its):.3f}, "
                  f"score {statistics.median(i['scoring'] for i in its):.3f}, "
                  f"train {statistics.median(i['training'] for i in its):.3f}), wall {run['wall_s']}s", flush=True)
    ok = [r for r in result["runs"] if "error" not in r]
    result["ours"], result["trl"] = summarize(ok, "ours"), summarize(ok, "trl")
    keys = ("total", *PHASES)
    result["ratio"] = {k: result["trl"][k] / result["ours"][k] for k in keys + tuple(f"cpu_{k}" for k in keys)}
    for name in ("run_medians", "cpu_run_medians"):
        pairs = zip(result["ours"][name], result["trl"][name], strict=False)  # a failed run leaves one side short
        result["ratio"][f"per_repeat_{name}"] = [round(t / o, 3) for o, t in pairs]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ours", "trl", "ratio")}, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["all", "ours", "trl"])
    parser.add_argument("--sft", type=Path, default=ROOT / "var/ppo-e2e/sft")
    parser.add_argument("--rm", type=Path, default=ROOT / "var/ppo-e2e/rm")
    parser.add_argument("--prompts", type=Path, default=ROOT / "var/ppo-e2e/prompts/train.jsonl")
    parser.add_argument("--n-prompts", type=int, default=256, help="the first N prompts of --prompts")
    parser.add_argument("--iterations", type=int, default=6, help="per process; the first is a warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--minibatch-size", type=int, default=8)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.command == "all":
        run_all(args)
    else:
        child(args)


if __name__ == "__main__":
    main()
