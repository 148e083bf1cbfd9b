"""GET /api/projects/{id}/export/: a project admin streams a training-ready JSONL export (issue 11).

alice labels project A; rita reviews it; adam administers it; bob labels project B only; sam is staff.
"""
from __future__ import annotations

import json

import pytest

from annotation import exporting, services
from annotation.loop.snapshots import create_snapshot
from tests.factories import best_first, make_project, make_ranking_task


@pytest.fixture
def labelled(project_a, users, settings, tmp_path):
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    for i in range(3):
        task = make_ranking_task(project_a, f"rank prompt {i}")
        services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=1)
    return project_a


def url(project) -> str:
    return f"/api/projects/{project.pk}/export/"


def test_an_admin_streams_the_export_as_json_lines(labelled, client_for):
    response = client_for("adam").get(url(labelled), {"format": "trl-pairwise", "ties": "both"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "application/x-ndjson"
    assert response["Content-Disposition"] == f'attachment; filename="project-{labelled.pk}-trl-pairwise.jsonl"'
    lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    options = exporting.export_options(project=labelled, format="trl-pairwise", ties="both")
    assert len(lines) == 18 and lines == list(exporting.rows(labelled, options))


def test_filters_and_snapshots_apply_over_the_api(labelled, client_for, users):
    snapshot = create_snapshot(project=labelled)
    client = client_for("sam")
    response = client.get(url(labelled), {"format": "listwise", "snapshot": snapshot.pk})
    assert len(b"".join(response.streaming_content).splitlines()) == 3
    response = client.get(url(labelled), {"format": "listwise", "labeler": "carol"})
    assert b"".join(response.streaming_content) == b""


def test_a_bad_format_name_is_a_400_with_a_field_message(labelled, client_for):
    response = client_for("adam").get(url(labelled), {"format": "csv"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and list(body["fields"]) == ["format"]


def test_parameters_that_do_not_fit_the_project_are_400s(labelled, client_for):
    other = create_snapshot(project=make_project("other"))
    response = client_for("adam").get(url(labelled), {"format": "listwise", "snapshot": other.pk, "ties": "both",
                                                      "round": "x"})
    assert response.status_code == 400 and set(response.json()["fields"]) == {"round"}
    response = client_for("adam").get(url(labelled), {"format": "listwise", "snapshot": other.pk, "ties": "both"})
    assert response.status_code == 400 and set(response.json()["fields"]) == {"snapshot", "ties"}


def test_labelers_and_reviewers_get_403_and_outsiders_404(labelled, client_for):
    assert client_for("alice").get(url(labelled), {"format": "sft"}).status_code == 403
    assert client_for("rita").get(url(labelled), {"format": "sft"}).status_code == 403
    assert client_for("bob").get(url(labelled), {"format": "sft"}).status_code == 404
    assert client_for(None).get(url(labelled), {"format": "sft"}).status_code in (401, 403)
