"""Small builders for test data, going through the same services the product uses."""
from __future__ import annotations

import itertools

from django.contrib.auth import get_user_model

from annotation import services
from annotation.models import Candidate, Membership, Project, Prompt, Task, TaskCandidate, TaskKind, TaskSlot

_counter = itertools.count(1)


def make_user(username: str, *, staff: bool = False):
    return get_user_model().objects.create_user(username=username, password="pw", is_staff=staff)


def make_project(name: str | None = None, *, members: dict | None = None, **fields) -> Project:
    fields.setdefault("k", 4)
    fields.setdefault("overlap", 1)
    fields.setdefault("prompt_writing_enabled", True)
    project = Project.objects.create(name=name or f"project {next(_counter)}", **fields)
    for user, role in (members or {}).items():
        Membership.objects.create(project=project, user=user, role=role)
    return project


def make_prompt(project: Project, text: str | None = None, *, candidates: list[str] | None = None) -> Prompt:
    item = {"text": text or f"prompt number {next(_counter)}"}
    if candidates is not None:
        item["candidates"] = [{"text": c} for c in candidates]
    result = services.bulk_create_prompts(project=project, items=[item])
    return result.created[0]


def make_ranking_task(project: Project, text: str | None = None, responses: list[str] | None = None) -> Task:
    n = next(_counter)
    responses = responses or [f"response {i} to prompt {n}" for i in range(project.k)]
    prompt = make_prompt(project, text or f"ranking prompt {n}", candidates=responses)
    return prompt.tasks.get(kind=TaskKind.RANKING)


def demonstration_task(prompt: Prompt) -> Task:
    return prompt.tasks.get(kind=TaskKind.DEMONSTRATION)


def best_first(task: Task) -> list[dict]:
    """A valid ranking of the task: candidates in display order, 1 = first."""
    ids = list(task.task_candidates.order_by("position").values_list("candidate_id", flat=True))
    return [{"candidate": cid, "rank": i + 1} for i, cid in enumerate(ids)]


def bulk_ranking_tasks(project: Project, n: int, *, batch: int = 2000) -> None:
    """``n`` open ranking tasks of ``project`` (its k candidates, its overlap in free slots), written with
    bulk_create: thousands in a second or two, for tests of the queue's size. No demonstration tasks."""
    for start in range(0, n, batch):
        size = min(batch, n - start)
        prompts = Prompt.objects.bulk_create(
            Prompt(project=project, text=f"bulk prompt {start + i}", content_hash=f"bulk-{project.pk}-{start + i}",
                   split="train") for i in range(size))
        candidates = Candidate.objects.bulk_create(
            Candidate(prompt=p, text=f"response {j}") for p in prompts for j in range(project.k))
        tasks = Task.objects.bulk_create(
            Task(project=project, kind=TaskKind.RANKING, prompt=p, target_overlap=project.overlap) for p in prompts)
        TaskCandidate.objects.bulk_create(TaskCandidate(task=t, candidate=candidates[i * project.k + j], position=j)
                                          for i, t in enumerate(tasks) for j in range(project.k))
        TaskSlot.objects.bulk_create(TaskSlot(task=t, project=project, kind=TaskKind.RANKING, index=s)
                                     for t in tasks for s in range(project.overlap))
