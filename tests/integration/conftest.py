"""Rounds and jobs with tiny models built from config (never downloaded)."""
from __future__ import annotations

import pytest

from annotation import services
from annotation.models import ModelVersion, Role, Task
from annotation.oracles import prefer_polite
from tests.factories import make_project, make_user
from tests.integration.oracles import longest_first_no_ties
from tests.training.conftest import tiny_base  # noqa: F401  (a session fixture: a 2-layer GPT-2 on disk)

# Stage settings small enough for a CI machine: each stage takes seconds.
TINY_ROUND = {
    "preset": "tiny",
    "sft": {"max_steps": 4, "batch_size": 4, "max_length": 96, "log_every": 1, "checkpoint_every": 2},
    "rm": {"max_steps": 4, "batch_size": 2, "max_length": 96, "log_every": 1},
    "ppo": {"iterations": 3, "batch_size": 4, "minibatch_size": 2, "ppo_epochs": 1,
            "checkpoint_every": 1, "sample_every": 1},
    "rloo": {"iterations": 3, "batch_size": 2, "k": 2, "minibatch_size": 2, "update_epochs": 1,
             "checkpoint_every": 1, "sample_every": 1},  # PPO's 4 rollouts an iteration
    "dpo": {"max_steps": 4, "batch_size": 2, "max_length": 96, "log_every": 1, "checkpoint_every": 2},
    "evaluate": {"max_prompts": 4, "batch_size": 8},
    "generate": {"prompts": 4, "models": ["policy", "sft"], "batch_size": 8},  # the path's policy, and SFT
    "gate": False,  # a tiny PPO policy may lose to SFT by chance: the gate has tests of its own
}
# Prompts whose content hash puts them in the test split: the held-out prompts a round evaluates on.
HELD_OUT = ["Held-out question number 52?", "Held-out question number 62?"]

RESPONSES = ["Thank you, I am glad to help: the answer is {i}.", "No.", "Maybe {i}, maybe not.",
             "Please see: {i} {i} {i}."]


@pytest.fixture
def loop_project(tiny_base, transactional_db, settings, tmp_path):  # noqa: F811
    """A k=2 project with a base model, 12 prompts with 2 candidates each, 2 held-out prompts, and 2
    labelers."""
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    project = make_project("loop", k=2, overlap=1, max_new_tokens=6)
    base = ModelVersion.objects.create(project=project, stage="base", artifact_path=str(tiny_base), name="tiny base")
    project.base_model = base
    project.save()
    items = [{"text": f"Tell me one fact about topic {i}.",
              "candidates": [RESPONSES[i % 4].format(i=i), RESPONSES[(i + 1) % 4].format(i=i)]} for i in range(12)]
    services.bulk_create_prompts(project=project, items=items + [{"text": text} for text in HELD_OUT])
    labelers = [make_user(f"sim{i}") for i in range(2)]
    for user in labelers:
        services.add_member(project=project, user=user, role=Role.LABELER)
    project.labelers = labelers
    return project


def label_everything(project) -> None:
    """Both labelers do every task through the services (as the API would)."""
    from annotation.models import Task

    for i, task in enumerate(Task.objects.filter(project=project, status="open").order_by("id")):
        user = project.labelers[i % 2]
        if task.kind == "ranking":
            candidates = list(task.task_candidates.select_related("candidate").order_by("position"))
            ranks = prefer_polite(task.prompt.text, [c.candidate.text for c in candidates])
            entries = [{"candidate": c.candidate_id, "rank": r} for c, r in zip(candidates, ranks, strict=True)]
            if len(set(ranks)) > 1:
                services.submit_ranking(labeler=user, task=task, entries=entries, seconds_spent=2)
        else:
            services.submit_demonstration(author=user, task=task, seconds_spent=5,
                                          text=f"Thank you for asking about {task.prompt.text[-9:-1]}.")


def rank_without_ties(project) -> None:
    """Rank every open ranking task, longest answer first: the tiny models' short answers would mostly tie
    under ``label_everything``'s oracle, and a tie teaches DPO (or best-ranked SFT) nothing."""
    for i, task in enumerate(Task.objects.filter(project=project, status="open", kind="ranking").order_by("id")):
        candidates = list(task.task_candidates.select_related("candidate").order_by("position"))
        ranks = longest_first_no_ties(task.prompt.text, [c.candidate.text for c in candidates])
        services.submit_ranking(labeler=project.labelers[i % 2], task=task, seconds_spent=2, entries=[
            {"candidate": c.candidate_id, "rank": r} for c, r in zip(candidates, ranks, strict=True)])


@pytest.fixture
def eager():
    """Celery runs tasks in this process, at once (a queued job runs where it is enqueued)."""
    from rlhf_platform.celery import app

    app.loader.import_default_modules()  # registers annotation.tasks, as a worker's autodiscovery does
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False
