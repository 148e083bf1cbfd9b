"""List endpoints run a fixed number of queries whatever the page size (no N+1)."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from knox.models import AuthToken
from rest_framework.test import APIClient

from annotation import services
from annotation.models import ModelVersion, Round
from tests.factories import best_first, demonstration_task, make_prompt, make_ranking_task


@pytest.fixture
def lots(project_a, users):
    project_a.overlap = 2
    project_a.save()
    for i in range(12):
        task = make_ranking_task(project_a)
        services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=i)
        demo = demonstration_task(make_prompt(project_a))
        services.submit_demonstration(author=users["alice"], task=demo, text=f"answer {i}", seconds_spent=i)
    round_ = Round.objects.create(project=project_a, number=1)
    for stage in ("base", "sft", "rm", "ppo"):
        ModelVersion.objects.create(project=project_a, stage=stage, round=round_, artifact_path=stage)


# Pinned counts for a labeler (alice) and a reviewer (rita): the session/auth queries are not counted
# because force_authenticate skips them. 1 = count, 1 = page, +n for each prefetch.
PINNED = {
    "/api/projects/": 2,
    "/api/prompts/": 2,
    "/api/tasks/": 4,          # count, page, prompt (joined), candidates prefetch
    "/api/rankings/": 3,       # count, page with task joined, entries prefetch
    "/api/demonstrations/": 2,
    "/api/rounds/": 2,
    "/api/model-versions/": 2,
    "/api/me/stats/": 4,
}


@pytest.mark.parametrize("who", ["alice", "rita"])
@pytest.mark.parametrize("url", list(PINNED))
def test_list_endpoints_run_a_pinned_number_of_queries(url, who, lots, client_for):
    client = client_for(who)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    assert len(queries) <= PINNED[url], [q["sql"][:120] for q in queries]
    if "results" in response.json():
        assert response.json()["count"] >= 0


# The labeling cycle's statements, pinned at their minimum (issue 13), savepoints aside. next-task: the project
# and role (access), then on PostgreSQL the user-row lock and one claim that returns the task, on SQLite (whose
# IMMEDIATE transaction is the lock) the claim and the task's read. submit-ranking: the task and role
# (access), the slot locked with the task's candidate ids, then on PostgreSQL one statement that writes the
# ranking, its entries and its first revision and finishes the slot and task (``PreparedInsertTree``); on SQLite
# one insert per table, then the task and its slots finished in two.
CYCLE = {"postgresql": {"next": 3, "submit": 3}, "sqlite": {"next": 3, "submit": 7}}


def statements(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]


def one_cycle(client, project) -> tuple[list[str], list[str]]:
    with CaptureQueriesContext(connection) as next_queries:
        response = client.post(f"/api/projects/{project.pk}/next-task/", {"kind": "ranking"})
    assert response.status_code == 200
    task = response.json()
    entries = [{"candidate": c["id"], "rank": i + 1} for i, c in enumerate(task["candidates"])]
    with CaptureQueriesContext(connection) as submit_queries:
        response = client.post(f"/api/tasks/{task['id']}/submit-ranking/", {"entries": entries, "seconds_spent": 4})
    assert response.status_code == 201
    return statements(next_queries), statements(submit_queries)


def test_next_task_and_submit_run_a_pinned_minimum_of_statements(project_a, users, client_for):
    for _ in range(5):
        make_ranking_task(project_a)
    next_sql, submit_sql = one_cycle(client_for("alice"), project_a)
    pinned = CYCLE[connection.vendor]
    assert len(next_sql) == pinned["next"], [sql[:100] for sql in next_sql]
    assert len(submit_sql) == pinned["submit"], [sql[:100] for sql in submit_sql]


def test_a_token_costs_no_statement_after_its_first_call(project_a, users):
    """The token and its user are remembered by the process (``annotation.auth``): a labeler's cycle runs the
    same statements with a token as with a session already loaded."""
    for _ in range(5):
        make_ranking_task(project_a)
    token = AuthToken.objects.create(user=users["alice"])[1]
    client = APIClient(HTTP_AUTHORIZATION=f"Token {token}")
    first_next, _ = one_cycle(client, project_a)
    assert any("knox_authtoken" in sql for sql in first_next)
    next_sql, submit_sql = one_cycle(client, project_a)
    pinned = CYCLE[connection.vendor]
    assert (len(next_sql), len(submit_sql)) == (pinned["next"], pinned["submit"]), next_sql + submit_sql
