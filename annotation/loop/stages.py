"""Each job stage as a call into the training library. This is the only module of the platform that
imports torch, and only inside the runners: each ``from training.<stage> import …`` sits in a function so
that the web process, which imports this module through the worker's task names, never loads torch.

The platform hands the library files (a snapshot, model directories) and gets back a model directory
and metrics, which it registers as a ModelVersion. Every stage checkpoints (the round presets set
``checkpoint_every``; generation keeps its finished batches), so a job whose worker died resumes where
its checkpoint left it and ends with the same result as an uninterrupted run.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from training.config import (
    DPOConfig,
    EvaluateConfig,
    GenerateConfig,
    PPOConfig,
    PretrainConfig,
    RewardConfig,
    RLOOConfig,
    SFTConfig,
)
from training.data import VERSION, write_jsonl

from ..models import Candidate, JobStage, ModelVersion, Prompt, Round, Task, TaskKind, TrainingJob
from ..services import create_ranking_tasks
from .config import PATHS, SFT_PLATFORM_FIELDS
from .snapshots import count_comparisons, new_sft_records, prompt_payload


@dataclass
class StageOutcome:
    status: str                     # "completed", or "stopped" when cancelled
    summary: dict = field(default_factory=dict)
    model_version: ModelVersion | None = None


def _input(job: TrainingJob, stage: str) -> ModelVersion:
    model = job.input_models.filter(stage=stage).order_by("-id").first()
    if model is None:
        raise ValueError(f"{job} needs an input model of stage {stage!r}")
    return model


def _snapshot_file(job: TrainingJob, name: str, *, optional: bool = False) -> Path | None:
    if job.snapshot is None:
        raise ValueError(f"{job} has no dataset snapshot")
    path = Path(job.snapshot.path) / name
    if job.snapshot.files.get(name, {}).get("records", 0) == 0:
        if optional:
            return None
        raise ValueError(f"snapshot {job.snapshot.content_hash[:12]} has no records in {name}: label more data first")
    return path


def project_format(job: TrainingJob) -> dict:
    """The prompt format every stage of the project uses (a stage's own config may override it only in a
    standalone job: a round's config validation refuses it)."""
    return {"chat_template": job.project.chat_template}


def project_rollouts(job: TrainingJob) -> dict:
    """What candidates, PPO's rollouts and the evaluation share: the format and the response length."""
    return {**project_format(job), "max_new_tokens": job.project.max_new_tokens}


def _register(job: TrainingJob, stage: str, out: Path, result, parent: ModelVersion | None) -> ModelVersion | None:
    if result.status != "completed":
        return None
    return ModelVersion.objects.create(
        project=job.project, stage=stage, parent=parent, round=job.round, snapshot=job.snapshot,
        name=f"{job.project.name} · round {job.round.number if job.round else '-'} · {stage}",
        artifact_path=str(out), config=job.config,
        metrics={k: v for k, v in result.summary.items() if isinstance(v, (int, float, str))},
    )


# The models an SFT job may start from, in order of preference (a round gives it exactly one: see
# ``rounds.sft_start_model``): the SFT model, or the active policy, or the base.
SFT_STARTS = (ModelVersion.Stage.SFT, ModelVersion.Stage.PPO, ModelVersion.Stage.RLOO, ModelVersion.Stage.DPO,
              ModelVersion.Stage.BASE)


def run_sft(job: TrainingJob, out: Path, progress) -> StageOutcome:
    """SFT from the job's input model (its parent in the lineage) on the snapshot's demonstrations and, with
    ``best_ranked``, its rankings' best responses; with ``exclude_snapshots`` (a round's ``data: "new"``) only
    on those no listed snapshot held, written under ``out/data/`` (the snapshot itself stays as exported)."""
    from training.sft import train_sft  # torch: worker only

    stage = next((s for s in SFT_STARTS if job.input_models.filter(stage=s).exists()), ModelVersion.Stage.BASE)
    base = _input(job, stage)  # no input at all: says which one it needs
    settings = {k: v for k, v in job.config.items() if k not in SFT_PLATFORM_FIELDS}
    exclude = settings.pop("exclude_snapshots", None)
    if exclude:
        demos, rankings = _new_sft_files(job, exclude, out / "data")
    else:
        demos, rankings = _snapshot_file(job, "sft.jsonl"), _snapshot_file(job, "rankings.jsonl", optional=True)
    config = SFTConfig.from_dict({**project_format(job), **settings, "base": base.artifact_path})
    config.best_ranked = config.best_ranked and rankings is not None  # a snapshot without rankings adds none
    result = train_sft(config, demos, out,
                       eval_data=_snapshot_file(job, "sft_eval.jsonl", optional=True), rankings=rankings,
                       on_log=progress.on_log, should_stop=progress.should_stop)
    return StageOutcome(result.status, result.summary, _register(job, ModelVersion.Stage.SFT, out, result, base))


def _new_sft_files(job: TrainingJob, exclude: list[int], folder: Path) -> tuple[Path | None, Path | None]:
    """The snapshot's demonstrations and rankings that none of the snapshots ``exclude`` held, as files in
    ``folder`` (None for a file with no records). Rewritten identically when the job resumes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, records in zip(("sft.jsonl", "rankings.jsonl"), new_sft_records(job.snapshot, exclude), strict=True):
        write_jsonl(folder / name, records)
        files.append(folder / name if records else None)
    return files[0], files[1]


def run_rm(job: TrainingJob, out: Path, progress) -> StageOutcome:
    from training.reward import train_reward_model  # torch: worker only

    sft = _input(job, ModelVersion.Stage.SFT)
    config = RewardConfig.from_dict({**project_format(job), **job.config, "base": sft.artifact_path})
    result = train_reward_model(config, _snapshot_file(job, "rankings.jsonl"), out,
                                eval_data=_snapshot_file(job, "rankings_eval.jsonl", optional=True),
                                demonstrations=_snapshot_file(job, "sft.jsonl", optional=True),
                                on_log=progress.on_log, should_stop=progress.should_stop)
    return StageOutcome(result.status, result.summary, _register(job, ModelVersion.Stage.RM, out, result, sft))


def _rl_config(job: TrainingJob, config_class):
    """(the round's SFT model, the PPO or RLOO config): the policy starts from SFT and is scored by the round's
    RM, the project's judge (if any) watches, with the project's rollout settings and the job's overrides."""
    sft, rm = _input(job, ModelVersion.Stage.SFT), _input(job, ModelVersion.Stage.RM)
    judge = job.project.judge_model
    return sft, config_class.from_dict({**project_rollouts(job), **job.config, "policy": sft.artifact_path,
                                        "reward_model": rm.artifact_path,
                                        "judge": judge.artifact_path if judge else ""})


def run_ppo(job: TrainingJob, out: Path, progress) -> StageOutcome:
    from training.ppo import train_ppo  # torch: worker only

    sft, config = _rl_config(job, PPOConfig)
    result = train_ppo(config, _snapshot_file(job, "ppo_prompts.jsonl"), out,
                       ptx_data=_snapshot_file(job, "sft.jsonl", optional=True),
                       eval_data=_snapshot_file(job, "ppo_eval_prompts.jsonl", optional=True),
                       on_log=progress.on_log, should_stop=progress.should_stop)
    return StageOutcome(result.status, result.summary, _register(job, ModelVersion.Stage.PPO, out, result, sft))


def run_rloo(job: TrainingJob, out: Path, progress) -> StageOutcome:
    """PPO's stage without a critic: the same prompts, held-out evaluation prompts, judge and rollouts."""
    from training.rloo import train_rloo  # torch: worker only

    sft, config = _rl_config(job, RLOOConfig)
    result = train_rloo(config, _snapshot_file(job, "ppo_prompts.jsonl"), out,
                        eval_data=_snapshot_file(job, "ppo_eval_prompts.jsonl", optional=True),
                        on_log=progress.on_log, should_stop=progress.should_stop)
    return StageOutcome(result.status, result.summary, _register(job, ModelVersion.Stage.RLOO, out, result, sft))


def run_dpo(job: TrainingJob, out: Path, progress) -> StageOutcome:
    """DPO on the snapshot's rankings, as the RM trains on them; the round's SFT model is both the starting
    policy and the frozen reference."""
    from training.dpo import train_dpo  # torch: worker only

    sft = _input(job, ModelVersion.Stage.SFT)
    config = DPOConfig.from_dict({**project_format(job), **job.config, "base": sft.artifact_path})
    result = train_dpo(config, _snapshot_file(job, "rankings.jsonl"), out,
                       eval_data=_snapshot_file(job, "rankings_eval.jsonl", optional=True),
                       on_log=progress.on_log, should_stop=progress.should_stop)
    return StageOutcome(result.status, result.summary, _register(job, ModelVersion.Stage.DPO, out, result, sft))


def run_pretrain(job: TrainingJob, out: Path, progress) -> StageOutcome:
    from training.pretrain import pretrain  # torch: worker only

    corpus = [p for p in (_snapshot_file(job, "sft.jsonl", optional=True),
                          _snapshot_file(job, "ppo_prompts.jsonl", optional=True)) if p]
    config = PretrainConfig.from_dict(job.config)
    result = pretrain(config, corpus, out, on_log=progress.on_log, should_stop=progress.should_stop)
    return StageOutcome(result.status, result.summary, _register(job, ModelVersion.Stage.BASE, out, result, None))


def run_evaluate(job: TrainingJob, out: Path, progress) -> StageOutcome:
    """The round's new policy (PPO's, RLOO's or DPO's, named after its stage) against its SFT model and the
    previous active policy on the snapshot's held-out (test-split) prompts: RM and judge scores, KL to SFT,
    length, end-of-sequence rate. With neither an RM (DPO's path in a project that never trained one) nor a
    judge there is nothing to score with: the summary says so (``scorers: 0``) and the gate lets it pass."""
    from training.evaluate import evaluate_policies  # torch: worker only

    settings = dict(job.config)
    roles = settings.pop("models")
    prompts = _snapshot_file(job, "ppo_eval_prompts.jsonl", optional=True)
    if prompts is None:
        return StageOutcome("completed", {"prompts": 0})
    models = {m.pk: m for m in job.input_models.all()}
    judge = job.project.judge_model
    rm = models.get(roles.get("rm"))
    if rm is None and judge is None:
        return StageOutcome("completed", {"scorers": 0})
    # A fixed order (a JSON object's keys come back sorted from PostgreSQL): the new policy, SFT, previous.
    names = [name for name in (*PATHS, "sft", "previous") if roles.get(name) in models]
    config = EvaluateConfig.from_dict({
        **project_rollouts(job), **settings,
        "policies": [models[roles[name]].artifact_path for name in names], "names": names, "baseline": "sft",
        "reference": models[roles["sft"]].artifact_path, "reward_model": rm.artifact_path if rm else "",
        "judge": judge.artifact_path if judge else ""})
    result = evaluate_policies(config, prompts, out, on_log=progress.on_log, should_stop=progress.should_stop)
    return StageOutcome(result.status, result.summary)


# A round's new comparisons should be at least this share of the reward model's data once they are
# labeled: fewer would barely move the next reward model (a round once added 5%).
NEW_COMPARISON_SHARE = 0.25
MIN_NEXT_ROUND_PROMPTS = 20
# The RM's held-out comparisons should number at least this many (33 fixed pairs once swung its accuracy
# from 0.49 to 0.64), and every round adds held-out prompts with the new policy's candidates, at least
# this share of its prompts, so that RM accuracy is measured on the policy's own samples.
HELD_OUT_COMPARISONS = 200
HELD_OUT_SHARE = 0.1


def comparisons_per_task(project) -> int:
    """Comparisons one ranking task yields once its overlap of labelers ranked it (without ties)."""
    return project.k * (project.k - 1) // 2 * project.overlap


def next_round_size(job: TrainingJob, requested: int | str) -> int:
    """How many next-round prompts get candidates: ``requested``, or with "auto" enough that the new
    comparisons are at least a quarter of the reward model's comparisons after the round:
    new ≥ old · share / (1 − share)."""
    if requested != "auto":
        return int(requested)
    old = count_comparisons(job.snapshot) if job.snapshot else 0
    needed = old * NEW_COMPARISON_SHARE / (1 - NEW_COMPARISON_SHARE)
    return max(MIN_NEXT_ROUND_PROMPTS, -int(-needed // comparisons_per_task(job.project)))


def held_out_size(job: TrainingJob, requested: int | str, count: int) -> int:
    """How many held-out (test-split) prompts also get candidates: ``requested``, or with "auto" enough to
    bring the RM's held-out comparisons to 200, and at least a tenth of the round's ``count``."""
    if requested != "auto":
        return int(requested)
    have = count_comparisons(job.snapshot, "rankings_eval.jsonl") if job.snapshot else 0
    missing = max(HELD_OUT_COMPARISONS - have, 0)
    return max(-(-missing // comparisons_per_task(job.project)), -int(-count * HELD_OUT_SHARE // 1))


def next_round_prompts(job: TrainingJob, count: int, seed: int, *, split: str = "train") -> list[Prompt]:
    """Prompts of ``split`` for the next round's ranking tasks: for the train split, labeler-written
    prompts that have no ranking task yet come first; then a seeded sample of the split's other prompts
    without a task in a later round."""
    project = job.project
    fresh = [] if split != "train" else list(
        Prompt.objects.filter(project=project, source=Prompt.Source.LABELER)
        .exclude(tasks__kind=TaskKind.RANKING).order_by("id")[:count])
    rest = list(Prompt.objects.filter(project=project, split=split)
                .exclude(pk__in=[p.pk for p in fresh])
                .exclude(tasks__kind=TaskKind.RANKING, tasks__round__number__gt=job.round.number if job.round else 0)
                .order_by("id"))
    random.Random(seed).shuffle(rest)
    return fresh + rest[:max(count - len(fresh), 0)]


def run_generate(job: TrainingJob, out: Path, progress) -> StageOutcome:
    """k candidates per next-round prompt, from one model or mixed from several (e.g. PPO and SFT), then
    the next round's ranking tasks. Idempotent: a job whose tasks exist (its worker died after making
    them) makes nothing new; a killed run resumes each model's generation from its finished batches."""
    from training.generate import CANDIDATES_FILE, generate_candidates, sequence_seed  # torch: worker only

    made = Task.objects.filter(source_job=job).count()
    if made:
        return StageOutcome("completed", {"tasks": made, "already_created": True})
    project = job.project
    models = list(job.input_models.order_by("id"))
    if not models:
        raise ValueError(f"{job} has no model to generate with")
    settings = dict(job.config)
    count, seed = next_round_size(job, settings.pop("prompts", "auto")), int(settings.get("seed", 0))
    held_out = next_round_prompts(job, held_out_size(job, settings.pop("held_out_prompts", 0), count), seed,
                                  split="test")
    prompts = next_round_prompts(job, count, seed) + held_out
    if not prompts:
        raise ValueError("no prompts are left for the next round")
    out.mkdir(parents=True, exist_ok=True)
    prompt_file = out / "prompts.jsonl"
    write_jsonl(prompt_file, ({"version": VERSION, "id": str(p.pk), "prompt": prompt_payload(p)} for p in prompts))
    share = -(-project.k // len(models))  # ceil: each model's candidates per prompt
    per_model: list[tuple[ModelVersion, dict, dict[str, list[dict]]]] = []
    for i, model in enumerate(models):
        config = GenerateConfig.from_dict({"temperature": project.temperature, "top_p": project.top_p,
                                           **project_rollouts(job), **settings,
                                           "model": model.artifact_path, "k": share, "seed": seed + i})
        result = generate_candidates(config, prompt_file, out / f"model-{model.pk}",
                                     on_log=progress.on_log, should_stop=progress.should_stop)
        if result.status != "completed":
            return StageOutcome(result.status, result.summary)
        rows = read_candidates(out / f"model-{model.pk}" / CANDIDATES_FILE)
        per_model.append((model, config.to_dict(), rows))
    proposals = []
    for index, prompt in enumerate(prompts):
        picked = []
        for slot in range(project.k):
            model, config, rows = per_model[slot % len(per_model)]
            # An empty answer is nothing to rank (and no response to train on): it is left out.
            candidates = [c for c in rows.get(str(prompt.pk), []) if c["text"].strip()]
            j = slot // len(per_model)
            if j < len(candidates):
                c = candidates[j]
                picked.append(Candidate(
                    prompt=prompt, text=c["text"], origin=Candidate.Origin.MODEL, model_version=model,
                    generation_params={**config, "finish_reason": c["finish_reason"], "tokens": c["tokens"],
                                       "mean_logprob": c["mean_logprob"], "job": job.pk},
                    seed=sequence_seed(config["seed"], index, j)))
        proposals.append((prompt, picked))
    target_round = Round.objects.next_after(job.round) if job.round else None
    tasks = create_ranking_tasks(source_job=job, round=target_round, proposals=proposals)
    return StageOutcome("completed", {"prompts": len(prompts), "tasks": tasks, "models": len(models),
                                      "prompts_asked": count, "held_out_prompts": len(held_out)})


def read_candidates(path: Path) -> dict[str, list[dict]]:
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        rows[record["prompt_id"]] = record["candidates"]
    return rows


RUNNERS = {JobStage.SFT: run_sft, JobStage.RM: run_rm, JobStage.PPO: run_ppo, JobStage.RLOO: run_rloo,
           JobStage.DPO: run_dpo, JobStage.PRETRAIN: run_pretrain, JobStage.EVALUATE: run_evaluate,
           JobStage.GENERATE: run_generate}


def run_stage(job: TrainingJob, out: Path, progress, *, threads: int = 0) -> StageOutcome:
    """Run the job's stage with ``threads`` torch CPU threads (0: as many as the CPUs this worker may
    really use; see ``TRAINING_THREADS``)."""
    from training.runtime import set_cpu_threads  # torch: worker only

    progress.log(f"torch CPU threads: {set_cpu_threads(threads)}")
    return RUNNERS[job.stage](job, out, progress)
