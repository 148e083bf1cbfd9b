"""The loop with real parts: a real Redis broker, real Celery worker processes (with the beat scheduler
that runs the dead-job sweep), the real HTTP API for simulated labelers, tiny models and a CI-sized
budget. Workers are killed with SIGKILL, as the kernel's OOM killer would; the broker's visibility timeout
is an hour, so every recovery below is the heartbeat's and the sweep's doing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection

from annotation.loop import rounds
from annotation.models import ModelVersion, Round, Task, TrainingJob
from tests.integration.conftest import HELD_OUT, TINY_ROUND

pytestmark = [pytest.mark.slow, pytest.mark.services]
ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


class Workers:
    """Start and kill real `celery worker` processes against the test database."""

    def __init__(self, redis_url: str, artifacts: Path, logs: Path):
        self.env = {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": redis_url,
                    "CELERY_BROKER_URL": redis_url, "ARTIFACT_ROOT": str(artifacts), "PYTHONUNBUFFERED": "1",
                    "TRAINING_JOB_STALE_SECONDS": "4", "TRAINING_JOB_SWEEP_SECONDS": "2",
                    "CELERY_VISIBILITY_TIMEOUT": "3600"}
        self.logs, self.processes = logs, []

    def start(self, name: str, *, beat: bool = True) -> subprocess.Popen:
        """A worker on both queues; with ``beat``, it also runs the scheduler (the dead-job sweep)."""
        log = (self.logs / f"{name}.log").open("w")
        scheduler = ["-B", "-s", str(self.logs / f"{name}-beat-schedule")] if beat else []
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), "-A", "rlhf_platform", "worker", "-Q", "training,default",
             "-c", "1", "-n", f"{name}-{os.getpid()}@%h", "-l", "info", "--without-gossip", "--without-mingle",
             *scheduler],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGKILL)  # the worker and its pool children, with no goodbye
        process.wait()

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def workers(redis_url, settings, tmp_path):
    from rlhf_platform.celery import app

    app.conf.task_always_eager = False
    pool = Workers(redis_url, settings.ARTIFACT_ROOT, tmp_path)
    settings.TRAINING_JOB_STALE_SECONDS = int(pool.env["TRAINING_JOB_STALE_SECONDS"])  # this process agrees
    yield pool
    pool.stop_all()
    for log in tmp_path.glob("*.log"):
        print(f"--- {log.name}\n{log.read_text()[-3000:]}")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def round_done(project, number: int):
    round_ = Round.objects.get(project=project, number=number)
    if round_.status in ("failed", "cancelled"):
        errors = {j.stage: j.error[-800:] for j in round_.jobs.all()}
        pytest.fail(f"round {number} {round_.status}: {errors}")
    return round_.status == "finished"


def simulate(project, url: str) -> None:
    call_command("simulate_labelers", project=str(project.pk), oracle="tests.integration.oracles:longest_first_no_ties",
                 demonstrator="annotation.oracles:polite_demonstrator", labelers=3, url=url, verbosity=0)


def test_two_full_rounds_with_simulated_labelers_and_a_real_worker(loop_project, live_server, workers):
    workers.start("worker")
    simulate(loop_project, live_server.url)
    assert Task.objects.filter(project=loop_project, status="open").count() == 0
    round1 = rounds.start_round(project=loop_project, config=TINY_ROUND)
    wait_for(lambda: round_done(loop_project, 1), 300, "round 1")
    ppo1 = TrainingJob.objects.get(round=round1, stage="ppo").result_model
    sft1 = TrainingJob.objects.get(round=round1, stage="sft").result_model

    round2 = Round.objects.get(project=loop_project, number=2)
    new_tasks = Task.objects.filter(round=round2, kind="ranking")
    assert new_tasks.count() == TINY_ROUND["generate"]["prompts"] + len(HELD_OUT)
    assert all(ppo1 in {c.model_version for c in t.candidates.all()} for t in new_tasks)
    simulate(loop_project, live_server.url)              # the labelers rank round 1's model outputs
    assert all(t.rankings.count() == 1 for t in new_tasks)

    rounds.start_round(project=loop_project, config=TINY_ROUND)
    wait_for(lambda: round_done(loop_project, 2), 300, "round 2")
    sft2 = TrainingJob.objects.get(round=round2, stage="sft").result_model
    assert sft2.parent == sft1                            # round 2 continues from round 1's SFT
    snapshot2 = TrainingJob.objects.get(round=round2, stage="sft").snapshot
    assert set(snapshot2.ranking_ids) > set(TrainingJob.objects.get(round=round1, stage="sft").snapshot.ranking_ids)
    assert Round.objects.get(project=loop_project, number=3).tasks.filter(kind="ranking").exists()
    for job in TrainingJob.objects.filter(project=loop_project):
        assert job.status == "succeeded" and job.history and job.metrics and job.worker_host, job
        assert Path(job.output_dir, "metrics.jsonl").exists() or job.stage == "generate"
    for model in ModelVersion.objects.filter(project=loop_project).exclude(stage="base"):
        assert Path(model.artifact_path, "config.json").exists() and model.metrics and model.snapshot_id


@pytest.fixture
def ppo_inputs(loop_project, tiny_base, tmp_path):
    """An SFT and a reward model version (tiny) for a standalone PPO job, and labels for its snapshot."""
    import torch

    from tests.integration.conftest import label_everything
    from training.reward import RewardModel

    rm_dir = tmp_path / "rm"
    torch.manual_seed(0)
    RewardModel.from_pretrained(tiny_base).save_pretrained(rm_dir)
    sft = ModelVersion.objects.create(project=loop_project, stage="sft", artifact_path=str(tiny_base))
    rm = ModelVersion.objects.create(project=loop_project, stage="rm", artifact_path=str(rm_dir), parent=sft)
    label_everything(loop_project)
    return [sft, rm]


def test_a_job_whose_worker_is_killed_resumes_from_its_checkpoint(loop_project, workers, ppo_inputs):
    # Long enough that it cannot finish between the check below and the kill, even on a fast machine
    # (progress reaches the database every two seconds).
    config = {**TINY_ROUND["ppo"], "iterations": 150, "checkpoint_every": 1}
    first = workers.start("worker-a", beat=False)
    job = rounds.start_stage(project=loop_project, stage="ppo", config=config, inputs=ppo_inputs)
    wait_for(lambda: TrainingJob.objects.get(pk=job.pk).step >= 3, 180, "the job to pass a checkpoint")
    workers.kill(first)
    killed_at = TrainingJob.objects.get(pk=job.pk).step
    assert TrainingJob.objects.get(pk=job.pk).status == "running"  # the dead worker never said goodbye
    workers.start("worker-b")
    wait_for(lambda: TrainingJob.objects.get(pk=job.pk).status == "succeeded", 600, "the redelivered job")
    job.refresh_from_db()
    assert job.attempts == 2 and "resuming from its checkpoint" in job.log_tail
    assert "stopped sending heartbeats; queued again" in job.log_tail  # the sweep, not the broker
    # metrics.jsonl holds both attempts: a run that started over would log step 1 twice.
    import json

    rows = [json.loads(line) for line in Path(job.output_dir, "metrics.jsonl").read_text().splitlines()]
    logged = [row["step"] for row in rows if "ppo/kl" in row]  # training iterations (eval/* rows aside)
    assert logged.count(1) == 1 and logged[-1] == 150 and set(logged) == set(range(1, 151))
    # The held-out evaluation ran before training and at the end, once each, across the two attempts.
    assert [row["step"] for row in rows if "eval/score" in row] == [0, 150]
    assert [p["step"] for p in job.history if "ppo/kl" in p].count(1) == 1 and killed_at >= 3
    assert job.result_model.stage == "ppo"


def test_cancelling_a_running_job_stops_it_at_its_next_step(loop_project, workers, ppo_inputs):
    workers.start("worker")
    config = {**TINY_ROUND["ppo"], "iterations": 200}
    job = rounds.start_stage(project=loop_project, stage="ppo", config=config, inputs=ppo_inputs)
    wait_for(lambda: TrainingJob.objects.get(pk=job.pk).step >= 2, 180, "the job to start")
    rounds.cancel_job(job=job)
    wait_for(lambda: TrainingJob.objects.get(pk=job.pk).status == "cancelled", 60, "the job to stop")
    job.refresh_from_db()
    assert job.step < 200 and job.result_model is None and job.finished


# --- kill -9 in each stage, then resumed by the sweep, with the result of an uninterrupted run -------------

# Each runs ~10-20 s on the tiny model, long enough to kill between two checkpoints on any machine.
LONG_STAGES = {
    "sft": {"max_steps": 1500, "batch_size": 4, "max_length": 96, "log_every": 10, "checkpoint_every": 50},
    "rm": {"max_steps": 1500, "batch_size": 2, "max_length": 96, "log_every": 10, "checkpoint_every": 50},
    "generate": {"prompts": 80, "max_new_tokens": 100, "batch_size": 2, "temperature": 1.0},
}
KILL_AFTER = {"sft": 120, "rm": 120, "generate": 30}  # steps (generation: sequences) of the first attempt


@pytest.fixture
def stage_inputs(loop_project, tiny_base):
    """Labels for a snapshot, 100 more prompts for generation, and each stage's input models."""
    from annotation import services
    from tests.integration.conftest import label_everything

    label_everything(loop_project)
    services.bulk_create_prompts(project=loop_project,
                                 items=[{"text": f"Say something kind about the number {i}."} for i in range(100)])
    sft = ModelVersion.objects.create(project=loop_project, stage="sft", artifact_path=str(tiny_base),
                                      parent=loop_project.base_model)
    return {"sft": [loop_project.base_model], "rm": [sft], "generate": [loop_project.base_model]}


def weights(directory: str) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        tensors.update({f"{path.name}:{k}": v for k, v in load_file(path).items()})
    assert tensors, f"no weights in {directory}"
    return tensors


def uninterrupted(job: TrainingJob) -> TrainingJob:
    """The same job (config, snapshot, inputs) run in this process without a kill."""
    from annotation.loop.worker import run_job

    twin = TrainingJob.objects.create(project=job.project, stage=job.stage, config=job.config, snapshot=job.snapshot)
    twin.input_models.set(job.input_models.all())
    assert run_job(twin.pk) == "succeeded"
    twin.refresh_from_db()
    return twin


@pytest.mark.parametrize("stage", ["sft", "rm", "generate"])
def test_a_stage_killed_by_kill_9_resumes_and_ends_as_an_uninterrupted_run(stage, loop_project, workers,
                                                                         stage_inputs, tmp_path):
    first = workers.start("worker-a", beat=False)
    job = rounds.start_stage(project=loop_project, stage=stage, config=LONG_STAGES[stage],
                             inputs=stage_inputs[stage])
    # Past a checkpoint (SFT/RM every 50 steps; generation keeps every finished batch), far from the end.
    wait_for(lambda: TrainingJob.objects.get(pk=job.pk).step >= KILL_AFTER[stage], 300,
             f"the {stage} job to pass a checkpoint")
    workers.kill(first)
    killed = TrainingJob.objects.get(pk=job.pk)
    assert killed.status == "running" and killed.step < killed.total
    workers.start("worker-b")  # with beat: the sweep finds the stale heartbeat and queues the job again
    wait_for(lambda: TrainingJob.objects.get(pk=job.pk).status in ("succeeded", "failed"), 600, "the resumed job")
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.attempts == 2 and "stopped sending heartbeats; queued again" in job.log_tail
    if stage == "generate":
        import json

        from training.config import GenerateConfig
        from training.generate import CANDIDATES_FILE, generate_candidates

        # One task per prompt with k non-empty answers (the tiny base sometimes answers nothing at all;
        # an empty answer is left out, and a prompt short of k answers gets no task this round).
        answers: dict[str, int] = {}
        for model_dir in Path(job.output_dir).glob("model-*"):
            for line in (model_dir / CANDIDATES_FILE).read_text().splitlines():
                row = json.loads(line)
                answers[row["prompt_id"]] = answers.get(row["prompt_id"], 0) + sum(
                    1 for c in row["candidates"] if c["text"].strip())
        expected = sum(1 for n in answers.values() if n >= job.project.k)
        assert len(answers) == 80 and expected >= 75
        assert job.metrics["summary/tasks"] == expected == Task.objects.filter(source_job=job).count()
        for model_dir in Path(job.output_dir).glob("model-*"):
            saved = json.loads((model_dir / "stage_config.json").read_text())["config"]
            assert json.loads((model_dir / "summary.json").read_text())["resumed_chunks"] > 0
            generate_candidates(GenerateConfig.from_dict({**saved, "resume": False}),
                                Path(job.output_dir) / "prompts.jsonl", tmp_path / model_dir.name)
            reference = tmp_path / model_dir.name / CANDIDATES_FILE
            assert (model_dir / CANDIDATES_FILE).read_bytes() == reference.read_bytes()
    else:
        assert "resuming from its checkpoint" in job.log_tail
        import torch

        resumed = weights(job.result_model.artifact_path)
        straight = weights(uninterrupted(job).result_model.artifact_path)
        assert resumed.keys() == straight.keys()
        assert all(torch.allclose(resumed[k].float(), straight[k].float(), atol=1e-5) for k in resumed)
        assert job.step == job.total == LONG_STAGES[stage]["max_steps"]


def test_a_stage_killed_every_time_it_runs_stops_at_max_attempts(loop_project, workers, ppo_inputs):
    workers.start("worker")
    config = {**TINY_ROUND["ppo"], "iterations": 400}
    job = rounds.start_stage(project=loop_project, stage="ppo", config=config, inputs=ppo_inputs)
    for attempt in (1, 2, 3):  # the kernel's OOM killer takes the pool process each time the stage runs
        running = wait_for(lambda a=attempt: TrainingJob.objects.filter(pk=job.pk, attempts=a, status="running",
                                                                        step__gte=1).first(), 180, f"attempt {attempt}")
        os.kill(running.worker_pid, signal.SIGKILL)
    wait_for(lambda: TrainingJob.objects.get(pk=job.pk).status == "failed", 120, "the job to fail")
    job.refresh_from_db()
    assert job.attempts == 3 and job.error.startswith("worker died 3 times") and job.finished
    time.sleep(8)  # two more sweeps and the requeued message: nothing runs it a fourth time
    job.refresh_from_db()
    assert job.status == "failed" and job.attempts == 3


def test_cancelling_a_job_whose_worker_died_cancels_it_at_once(loop_project, workers, ppo_inputs):
    first = workers.start("worker-a", beat=False)
    job = rounds.start_stage(project=loop_project, stage="ppo", config={**TINY_ROUND["ppo"], "iterations": 400},
                             inputs=ppo_inputs)
    wait_for(lambda: TrainingJob.objects.get(pk=job.pk).step >= 2, 180, "the job to start")
    workers.kill(first)
    wait_for(lambda: TrainingJob.objects.stale().filter(pk=job.pk).exists(), 30, "the heartbeat to go stale")
    rounds.cancel_job(job=job)
    job.refresh_from_db()
    assert job.status == "cancelled" and job.finished and job.result_model is None
