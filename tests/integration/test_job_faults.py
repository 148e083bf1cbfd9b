"""Jobs under faults, in-process and deterministic (the real-worker versions are in test_worker.py): a
worker that dies is noticed by its stale heartbeat; the sweep requeues its job or, past its attempts,
fails it; cancel always wins; a worker taken for dead can no longer write; a redelivered generate job
makes nothing new; a job of a superseded round run can neither advance nor be retried."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation import services
from annotation.loop import rounds
from annotation.loop.config import PRESETS
from annotation.loop.snapshots import create_snapshot
from annotation.loop.worker import JobProgress, claim_job, run_job, sweep_dead_jobs
from annotation.models import Candidate, Round, Task, TrainingJob
from tests.integration.conftest import TINY_ROUND, label_everything

pytestmark = [pytest.mark.slow]


@pytest.fixture
def sent(monkeypatch):
    """Jobs sent to the broker, recorded instead of sent (for tests that only look at the rows)."""
    messages: list[int] = []
    monkeypatch.setattr(rounds, "enqueue", lambda job: messages.append(job.pk))
    return messages


@pytest.fixture
def round_job(loop_project, transactional_db, settings):
    """Round 1 training, run 1, with its SFT job queued."""
    settings.TRAINING_JOB_STALE_SECONDS = 30
    label_everything(loop_project)
    round_ = Round.objects.create(project=loop_project, number=1, status=Round.Status.TRAINING, run=1,
                                  config=TINY_ROUND)
    job = TrainingJob.objects.create(project=loop_project, round=round_, round_run=1, stage="sft",
                                     config=TINY_ROUND["sft"], snapshot=create_snapshot(project=loop_project))
    job.input_models.set([loop_project.base_model])
    return job


def die(job: TrainingJob) -> None:
    """The job's worker stops sending heartbeats (killed with no goodbye)."""
    TrainingJob.objects.filter(pk=job.pk).update(heartbeat=timezone.now() - timedelta(seconds=31))


def test_a_job_whose_worker_died_max_attempts_times_fails_with_that_reason(round_job, sent):
    for attempt in (1, 2, 3):
        assert claim_job(round_job.pk, f"worker-{attempt}").attempts == attempt
        die(round_job)
        if attempt < 3:
            assert sweep_dead_jobs() == {"queued": [round_job.pk]}
    assert claim_job(round_job.pk, "worker-4") is None       # no fourth attempt
    assert sweep_dead_jobs() == {"failed": [round_job.pk]}
    round_job.refresh_from_db()
    assert round_job.status == "failed" and round_job.finished
    assert round_job.error.startswith("worker died 3 times (last on worker-3)")
    assert round_job.round.status == "failed" and sent == [round_job.pk, round_job.pk]
    assert sweep_dead_jobs() == {}                             # settled once


def test_a_delivery_that_finds_a_job_dead_past_its_attempts_fails_it_at_once(round_job, settings):
    settings.TRAINING_JOB_MAX_ATTEMPTS = 1
    TrainingJob.objects.filter(pk=round_job.pk).update(max_attempts=1)
    claim_job(round_job.pk, "worker-a")
    die(round_job)
    assert run_job(round_job.pk) == "skipped"
    round_job.refresh_from_db()
    assert round_job.status == "failed" and "worker died 1 times" in round_job.error


def test_the_sweep_requeues_a_dead_job_which_resumes_on_the_next_worker(round_job, eager):
    claim_job(round_job.pk, "worker-a")
    die(round_job)
    sweep_dead_jobs()  # requeues it; the eager broker runs it at once, as a live worker would
    round_job.refresh_from_db()
    assert round_job.status == "succeeded" and round_job.attempts == 2
    assert "worker on worker-a stopped sending heartbeats; queued again" in round_job.log_tail
    assert "attempt 2 of 3" in round_job.log_tail
    assert "torch CPU threads: " in round_job.log_tail


def test_the_sweep_leaves_live_and_queued_jobs_alone(round_job, sent):
    assert sweep_dead_jobs() == {}
    claim_job(round_job.pk, "worker-a")
    assert sweep_dead_jobs() == {} and TrainingJob.objects.get(pk=round_job.pk).status == "running"


def test_cancelling_a_job_whose_worker_died_cancels_it_at_once(round_job):
    claim_job(round_job.pk, "worker-a")
    die(round_job)
    rounds.cancel_job(job=round_job)
    round_job.refresh_from_db()
    assert round_job.status == "cancelled" and round_job.finished and round_job.round.status == "cancelled"
    assert run_job(round_job.pk) == "skipped"   # the broker's redelivery changes nothing
    assert TrainingJob.objects.get(pk=round_job.pk).status == "cancelled"


def test_a_cancel_asked_while_the_worker_lived_wins_when_it_dies(round_job, sent):
    claim_job(round_job.pk, "worker-a")
    rounds.cancel_job(job=round_job)
    assert TrainingJob.objects.get(pk=round_job.pk).status == "running"   # asked; it stops at its next step
    die(round_job)
    assert sweep_dead_jobs() == {"cancelled": [round_job.pk]} and sent == []
    assert claim_job(round_job.pk, "worker-b") is None


def test_a_worker_taken_for_dead_can_no_longer_write_and_stops(round_job, sent):
    zombie = JobProgress(claim_job(round_job.pk, "worker-a"), interval=0)
    die(round_job)
    sweep_dead_jobs()
    claim_job(round_job.pk, "worker-b")
    zombie.on_log(5, 10, {"train/loss": 1.0})
    round_job.refresh_from_db()
    assert round_job.step == 0 and round_job.worker_host == "worker-b" and round_job.attempts == 2
    assert zombie.should_stop() is True
    assert zombie.mine().update(status="succeeded") == 0


@pytest.fixture
def generate_job(loop_project, transactional_db, eager):
    """A generate job run to its end on the base model (standalone: its tasks have no round)."""
    config = {"prompts": 4, "max_new_tokens": 6, "batch_size": 8}
    job = rounds.start_stage(project=loop_project, stage="generate", config=config,
                             inputs=[loop_project.base_model])
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    return job


def test_a_redelivered_generate_job_creates_nothing_new(generate_job):
    tasks = set(Task.objects.filter(source_job=generate_job).values_list("id", flat=True))
    candidates = Candidate.objects.count()
    assert len(tasks) == 4
    # Its worker died after the tasks were committed and before the job was marked done; the broker
    # redelivers the message.
    TrainingJob.objects.filter(pk=generate_job.pk).update(status="running", heartbeat=timezone.now() - timedelta(
        days=1), finished=None)
    assert run_job(generate_job.pk) == "succeeded"
    generate_job.refresh_from_db()
    assert set(Task.objects.filter(source_job=generate_job).values_list("id", flat=True)) == tasks
    assert Candidate.objects.count() == candidates and generate_job.attempts == 2
    assert generate_job.metrics["summary/already_created"] == 1


def test_a_generate_job_can_never_hold_two_tasks_of_one_prompt(generate_job):
    task = Task.objects.filter(source_job=generate_job).first()
    assert services.create_ranking_tasks(source_job=generate_job, round=None, proposals=[(task.prompt, [])]) == 0
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.create(project=task.project, kind="ranking", prompt=task.prompt, source_job=generate_job)


def test_a_job_of_a_superseded_round_run_is_refused_a_retry(round_job, client_for, users, sent):
    TrainingJob.objects.filter(pk=round_job.pk).update(status="failed", error="boom")
    Round.objects.filter(pk=round_job.round_id).update(run=2, status=Round.Status.TRAINING)  # started again
    response = client_for("sam").post(f"/api/jobs/{round_job.pk}/retry/")
    assert response.status_code == 409 and "started again" in response.json()["message"]
    round_job.refresh_from_db()
    assert round_job.status == "failed" and sent == []


def test_a_job_of_a_superseded_round_run_never_advances_the_round(round_job, sent):
    Round.objects.filter(pk=round_job.round_id).update(run=2)
    TrainingJob.objects.filter(pk=round_job.pk).update(status="failed")
    rounds.on_job_finished(round_job.pk)
    assert Round.objects.get(pk=round_job.round_id).status == "training"   # the current run decides


def test_starting_a_failed_round_again_begins_a_new_run(round_job, sent):
    Round.objects.filter(pk=round_job.round_id).update(status=Round.Status.FAILED)
    TrainingJob.objects.filter(pk=round_job.pk).update(status="failed")
    restarted = rounds.start_round(project=round_job.project, config=TINY_ROUND)
    assert restarted.pk == round_job.round_id and restarted.run == 2
    new_sft = TrainingJob.objects.get(pk=sent[-1])
    assert new_sft.round_run == 2 and new_sft.stage == "sft"
    assert TrainingJob.objects.get(pk=round_job.pk).is_superseded()
    with pytest.raises(Exception, match="started again"):
        rounds.retry_job(job=round_job)


def test_every_preset_checkpoints_every_stage():
    for name, preset in PRESETS.items():
        for stage in ("sft", "rm", "ppo", "rloo", "dpo"):
            assert preset[stage].get("checkpoint_every", 0) > 0, (name, stage)
        assert preset["generate"].get("resume", True), name  # generation keeps its finished batches


def test_the_pages_and_the_api_say_why_a_job_failed(round_job, sent, users, client_for):
    from django.test import Client
    from django.urls import reverse

    for attempt in (1, 2, 3):
        claim_job(round_job.pk, f"worker-{attempt}")
        die(round_job)
        sweep_dead_jobs()
    client = Client()
    client.force_login(users["sam"])
    job_page = client.get(reverse("labeling:manage-job", args=[round_job.pk])).content.decode()
    project_page = client.get(reverse("labeling:manage-project", args=[round_job.project_id])).content.decode()
    assert "worker died 3 times" in job_page and "attempt <span data-field=\"attempts\">3</span> of 3" in job_page
    assert "worker died 3 times" in project_page
    body = client_for("sam").get(f"/api/jobs/{round_job.pk}/").json()
    assert body["failure_reason"].startswith("worker died 3 times") and body["max_attempts"] == 3


def test_a_round_adds_enough_new_comparisons_to_matter(round_job, monkeypatch):
    from annotation.loop import stages
    from annotation.loop.snapshots import comparisons, count_comparisons

    assert comparisons([1, 2, 2, 3]) == 5 and comparisons([1, 1]) == 0
    lines = Path(round_job.snapshot.path, "rankings.jsonl").read_text().splitlines()
    labeled = sum(comparisons(json.loads(line)["ranks"]) for line in lines)
    assert count_comparisons(round_job.snapshot) == labeled > 0
    assert stages.next_round_size(round_job, 7) == 7
    monkeypatch.setattr(stages, "count_comparisons", lambda snapshot: 3000)
    project = round_job.project
    assert (project.k, project.overlap) == (2, 1)             # one comparison per new task
    assert stages.next_round_size(round_job, "auto") == 1000  # 1000 / (3000 + 1000) = 1/4
    project.k, project.overlap = 4, 2                         # 6 comparisons per task and labeler, twice
    assert stages.next_round_size(round_job, "auto") == 84    # ⌈1000 / 12⌉
    monkeypatch.setattr(stages, "count_comparisons", lambda snapshot: 30)
    assert stages.next_round_size(round_job, "auto") == 20    # never fewer than 20


def test_held_out_prompts_get_candidates_until_the_rm_has_200_held_out_comparisons(round_job, monkeypatch):
    from annotation.loop import stages

    assert stages.held_out_size(round_job, 3, 40) == 3
    monkeypatch.setattr(stages, "count_comparisons", lambda snapshot, name="rankings.jsonl": 0)
    assert stages.held_out_size(round_job, "auto", 40) == 200    # k = 2: one comparison per task
    monkeypatch.setattr(stages, "count_comparisons", lambda snapshot, name="rankings.jsonl": 500)
    assert stages.held_out_size(round_job, "auto", 40) == 4      # enough already: a tenth of the round's prompts
