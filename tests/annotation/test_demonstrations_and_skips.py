"""Demonstrations, skips (with undo) and prompt writing through the API."""
from __future__ import annotations

import uuid

import pytest

from annotation import services
from annotation.models import Demonstration, Prompt, Skip, Task, TaskKind, TaskSlot
from tests.factories import demonstration_task, make_prompt, make_ranking_task


@pytest.fixture
def demo_task(project_a, users):
    task = demonstration_task(make_prompt(project_a, "Write a limerick about Django"))
    services.next_task(user=users["alice"], project=project_a, kind="demonstration")
    return task


def write(client, task, text="There once was a framework...", seconds=40):
    return client.post(f"/api/tasks/{task.pk}/submit-demonstration/", {"text": text, "seconds_spent": seconds})


def test_it_records_a_demonstration(client_for, demo_task, users):
    response = write(client_for("alice"), demo_task)
    assert response.status_code == 201
    demo = Demonstration.objects.get()
    assert (demo.author, demo.prompt_id, demo.seconds_spent) == (users["alice"], demo_task.prompt_id, 40)
    assert demo.review_status == "submitted"
    demo_task.refresh_from_db()
    assert demo_task.status == Task.Status.COMPLETE


def test_a_retried_demonstration_is_not_duplicated(client_for, demo_task):
    first, retry = write(client_for("alice"), demo_task), write(client_for("alice"), demo_task)
    assert (first.status_code, retry.status_code) == (201, 200)
    assert first.json()["id"] == retry.json()["id"] and Demonstration.objects.count() == 1


def test_an_empty_demonstration_is_a_400(client_for, demo_task):
    response = write(client_for("alice"), demo_task, text="   ")
    assert response.status_code == 400 and "text" in response.json()["fields"]
    assert Demonstration.objects.count() == 0


def test_a_skip_records_the_reason_and_frees_the_slot(client_for, demo_task, users):
    response = client_for("alice").post(f"/api/tasks/{demo_task.pk}/skip/", {"reason": "I don't know limericks"})
    assert response.status_code == 201
    assert Skip.objects.get().reason == "I don't know limericks"
    assert TaskSlot.objects.get(task=demo_task).status == TaskSlot.Status.FREE


def test_a_skip_needs_a_reason(client_for, demo_task):
    response = client_for("alice").post(f"/api/tasks/{demo_task.pk}/skip/", {"reason": ""})
    assert response.status_code == 400 and "reason" in response.json()["fields"]
    assert Skip.objects.count() == 0
    assert TaskSlot.objects.get(task=demo_task).status == TaskSlot.Status.LEASED


def test_a_retried_skip_is_not_duplicated(client_for, demo_task):
    client = client_for("alice")
    assert client.post(f"/api/tasks/{demo_task.pk}/skip/", {"reason": "r"}).status_code == 201
    assert client.post(f"/api/tasks/{demo_task.pk}/skip/", {"reason": "r"}).status_code == 200
    assert Skip.objects.count() == 1


def test_undoing_a_skip_offers_the_task_again(client_for, demo_task, project_a):
    client = client_for("alice")
    client.post(f"/api/tasks/{demo_task.pk}/skip/", {"reason": "oops"})
    assert client.post(f"/api/projects/{project_a.pk}/next-task/", {"kind": "demonstration"}).status_code == 204
    undone = client.post(f"/api/tasks/{demo_task.pk}/undo-skip/")
    assert undone.status_code == 200 and undone.json()["id"] == demo_task.pk
    assert Skip.objects.count() == 0
    body = client.post(f"/api/projects/{project_a.pk}/next-task/", {"kind": "demonstration"}).json()
    assert body["id"] == demo_task.pk


def test_undoing_a_skip_swaps_the_next_lease_back_for_the_skipped_task(client_for, demo_task, project_a, users):
    following = demonstration_task(make_prompt(project_a, "the next prompt"))
    client = client_for("alice")
    client.post(f"/api/tasks/{demo_task.pk}/skip/", {"reason": "oops"})
    assert client.post(f"/api/projects/{project_a.pk}/next-task/", {"kind": "demonstration"}).json()["id"] == \
        following.pk
    assert client.post(f"/api/tasks/{demo_task.pk}/undo-skip/").json()["id"] == demo_task.pk
    assert TaskSlot.objects.get(task=following).status == TaskSlot.Status.FREE
    assert TaskSlot.objects.get(task=demo_task).labeler == users["alice"]


def test_undoing_when_there_was_no_skip_changes_nothing(client_for, demo_task):
    assert client_for("alice").post(f"/api/tasks/{demo_task.pk}/undo-skip/").status_code == 204
    assert TaskSlot.objects.get(task=demo_task).status == TaskSlot.Status.LEASED


def test_a_submitted_task_cannot_be_skipped(client_for, demo_task):
    write(client_for("alice"), demo_task)
    assert client_for("alice").post(f"/api/tasks/{demo_task.pk}/skip/", {"reason": "r"}).status_code == 409
    assert Skip.objects.count() == 0


def test_a_skipped_task_cannot_be_submitted(client_for, demo_task):
    client_for("alice").post(f"/api/tasks/{demo_task.pk}/skip/", {"reason": "r"})
    assert write(client_for("alice"), demo_task).status_code == 409
    assert Demonstration.objects.count() == 0


def test_a_labeler_writes_a_prompt_that_becomes_a_demonstration_task(client_for, project_a, users):
    token = str(uuid.uuid4())
    payload = {"text": "How do I brew green tea?", "tags": ["cooking"], "client_token": token}
    response = client_for("alice").post(f"/api/projects/{project_a.pk}/write-prompt/", payload)
    assert response.status_code == 201
    prompt = Prompt.objects.get()
    assert (prompt.source, prompt.author, prompt.tags) == ("labeler", users["alice"], ["cooking"])
    assert prompt.tasks.get().kind == TaskKind.DEMONSTRATION


def test_a_retried_written_prompt_is_not_duplicated(client_for, project_a):
    payload = {"text": "How do I brew green tea?", "client_token": str(uuid.uuid4())}
    first = client_for("alice").post(f"/api/projects/{project_a.pk}/write-prompt/", payload)
    retry = client_for("alice").post(f"/api/projects/{project_a.pk}/write-prompt/", payload)
    assert (first.status_code, retry.status_code) == (201, 200)
    assert Prompt.objects.count() == 1


def test_a_written_conversation_must_end_with_the_user(client_for, project_a):
    payload = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
               "client_token": str(uuid.uuid4())}
    response = client_for("alice").post(f"/api/projects/{project_a.pk}/write-prompt/", payload)
    assert response.status_code == 400 and "messages" in response.json()["fields"]
    assert Prompt.objects.count() == 0


def test_prompt_writing_must_be_enabled(client_for, project_a):
    project_a.prompt_writing_enabled = False
    project_a.save()
    payload = {"text": "Anything", "client_token": str(uuid.uuid4())}
    response = client_for("alice").post(f"/api/projects/{project_a.pk}/write-prompt/", payload)
    assert response.status_code == 400 and "project" in response.json()["fields"]


def test_my_stats_count_and_median_seconds_per_kind(client_for, project_a, users):
    for seconds in (10, 20, 60):
        task = make_ranking_task(project_a)
        services.submit_ranking(labeler=users["alice"], task=task, seconds_spent=seconds,
                                entries=[{"candidate": c, "rank": 1} for c in
                                         task.task_candidates.values_list("candidate_id", flat=True)])
    demo = demonstration_task(make_prompt(project_a))
    services.submit_demonstration(author=users["alice"], task=demo, text="answer", seconds_spent=90)
    body = client_for("alice").get("/api/me/stats/").json()
    assert body["ranking"] == {"count": 3, "median_seconds": 20.0, "today": 3, "today_median_seconds": 20.0}
    assert body["demonstration"]["count"] == 1 and body["demonstration"]["median_seconds"] == 90.0
    assert client_for("carol").get("/api/me/stats/").json()["ranking"]["count"] == 0


def _first_read_misses(monkeypatch, name):
    """The read before the insert misses the row once, as when a concurrent request commits it between
    that read and this request's insert (what PostgreSQL does under READ COMMITTED)."""
    real, calls = getattr(services, name), []

    def racing(*args, **kwargs):
        calls.append(1)
        return None if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(services, name, racing)


def test_a_written_prompt_retried_while_the_first_is_in_flight_returns_the_first(client_for, project_a,
                                                                                 monkeypatch):
    """Regression: concurrent write-prompt requests with the same client_token raised an uncaught
    IntegrityError (500) on PostgreSQL."""
    payload = {"text": "How do I brew green tea?", "client_token": str(uuid.uuid4())}
    first = client_for("alice").post(f"/api/projects/{project_a.pk}/write-prompt/", payload)
    _first_read_misses(monkeypatch, "_prompt_with_token")
    _first_read_misses(monkeypatch, "_prompt_with_hash")
    retry = client_for("alice").post(f"/api/projects/{project_a.pk}/write-prompt/", payload)
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json()["id"] == first.json()["id"] and Prompt.objects.count() == 1


def test_the_same_prompt_imported_twice_at_once_is_created_once_and_reported_as_a_duplicate(client_for, project_a,
                                                                                            monkeypatch):
    """Regression: concurrent imports of the same content raised an uncaught IntegrityError (500)."""
    body = {"project": project_a.pk, "items": [{"text": "Same content"}]}
    assert client_for("adam").post("/api/prompts/bulk/", body, format="json").status_code == 201
    _first_read_misses(monkeypatch, "_prompt_with_hash")
    response = client_for("adam").post("/api/prompts/bulk/", body, format="json")
    assert response.status_code in (200, 201) and Prompt.objects.count() == 1
    assert len(response.json()["duplicates"]) == 1 and response.json()["created"] == []
