"""next-task and submit-ranking build their responses without DRF's serializers (issue 13: they cost more
than the database work). They must stay exactly what the serializers, and so the OpenAPI schema, say."""
from __future__ import annotations

import pytest
from django.test import override_settings

from annotation import gold, services
from annotation.models import Role, TaskKind
from tests.factories import best_first, make_project, make_ranking_task


def next_task(client, project, kind="ranking") -> dict:
    response = client.post(f"/api/projects/{project.pk}/next-task/", {"kind": kind})
    assert response.status_code == 200
    return response.json()


def shown_by_the_task_endpoint(client, task_id: int) -> dict:
    """The same task through TaskSerializer (GET /api/tasks/{id}/, with the caller's lease)."""
    response = client.get(f"/api/tasks/{task_id}/")
    assert response.status_code == 200
    return response.json()


def test_next_task_shows_a_ranking_task_as_the_task_serializer_does(client_for, project_a):
    make_ranking_task(project_a, "Rank these", ["one", "two", "three", "four"])
    alice = client_for("alice")
    served = next_task(alice, project_a)
    assert served == shown_by_the_task_endpoint(alice, served["id"])
    assert len(served["candidates"]) == 4 and served["lease_expires"].endswith("Z")


def test_next_task_shows_a_conversation_demonstration_task_as_the_task_serializer_does(client_for, project_a):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Tell me a joke"}]
    services.bulk_create_prompts(project=project_a, items=[{"messages": messages, "language": "de"}])
    alice = client_for("alice")
    served = next_task(alice, project_a, TaskKind.DEMONSTRATION)
    assert served == shown_by_the_task_endpoint(alice, served["id"])
    assert served["prompt"]["messages"] == messages and served["candidates"] == []


@pytest.mark.parametrize("done", [0, 3])
def test_next_task_hides_a_gold_tasks_slots_as_the_task_serializer_does(client_for, users, done):
    alice, adam = users["alice"], users["adam"]
    project = make_project("gold looks ordinary", k=2, overlap=2, gold_rate=0.5,
                           members={alice: Role.LABELER, adam: Role.ADMIN})
    make_ranking_task(project)
    task = make_ranking_task(project)
    gold.mark_gold(admin=adam, task=task, gold_ranks={str(e["candidate"]): e["rank"] for e in best_first(task)})
    task.refresh_from_db()
    if done:
        type(task).objects.filter(pk=task.pk).update(done_count=done)
    key = next(f"key {i}" for i in range(1000) if gold_turn_under(f"key {i}", alice, project))
    with override_settings(SECRET_KEY=key):
        served = next_task(client_for("alice"), project)
    assert served["id"] == task.pk  # the gold task, on alice's gold turn
    assert served == shown_by_the_task_endpoint(client_for("alice"), task.pk)
    assert served["target_overlap"] == 2 and served["done_count"] == min(done, 1)


def gold_turn_under(key: str, user, project) -> bool:
    with override_settings(SECRET_KEY=key):
        return services.gold_turn(user=user, project=project, served=0)


def test_submit_ranking_answers_as_the_ranking_serializer_does(client_for, project_a):
    task = make_ranking_task(project_a)
    alice = client_for("alice")
    next_task(alice, project_a)
    entries = best_first(task)
    entries[0].update(quality=6, harmful=True)
    entries[1]["rank"] = 1  # a tie
    for e in entries[2:]:
        e["rank"] -= 1
    response = alice.post(f"/api/tasks/{task.pk}/submit-ranking/",
                          {"entries": entries, "seconds_spent": 7, "comment": "close call"}, format="json")
    assert response.status_code == 201
    submitted = response.json()
    stored = alice.get(f"/api/rankings/{submitted['id']}/").json()  # RankingSerializer, read back

    def by_candidate(body):
        return {**body, "entries": sorted(body["entries"], key=lambda e: e["candidate"])}

    assert by_candidate(submitted) == by_candidate(stored)
    assert [e["candidate"] for e in submitted["entries"]] == [e["candidate"] for e in entries]  # as sent
    retry = alice.post(f"/api/tasks/{task.pk}/submit-ranking/",
                       {"entries": entries, "seconds_spent": 9, "comment": "close call"}, format="json")
    assert retry.status_code == 200 and by_candidate(retry.json()) == by_candidate(stored)
