"""List endpoints run a fixed number of queries whatever the page size (no N+1)."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

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


def test_next_task_and_submit_stay_lean(project_a, users, client_for):
    for _ in range(5):
        make_ranking_task(project_a)
    client = client_for("alice")
    with CaptureQueriesContext(connection) as next_queries:
        task = client.post(f"/api/projects/{project_a.pk}/next-task/", {"kind": "ranking"}).json()
    entries = [{"candidate": c["id"], "rank": i + 1} for i, c in enumerate(task["candidates"])]
    with CaptureQueriesContext(connection) as submit_queries:
        response = client.post(f"/api/tasks/{task['id']}/submit-ranking/", {"entries": entries, "seconds_spent": 4})
    assert response.status_code == 201
    assert len(next_queries) <= 9, [q["sql"][:100] for q in next_queries]
    assert len(submit_queries) <= 12, [q["sql"][:100] for q in submit_queries]
