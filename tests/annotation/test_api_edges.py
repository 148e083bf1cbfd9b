"""Edges schemathesis found in the API: ids no route or database column can hold, and paths no route
matches. Each answers with the API's error body (400 or 404), never a server error or an HTML page."""
from __future__ import annotations

import pytest

BIG = 2**70  # larger than any database integer


def test_an_api_path_no_route_matches_answers_json_404(client_for, project_a):
    for path in ("/api/candidates/-3/lineage/", "/api/no-such-thing/"):
        response = client_for("alice").get(path)
        assert response.status_code == 404
        assert response["Content-Type"].startswith("application/json")
        assert response.json() == {"status": 404, "code": "not_found", "message": "Not found.", "fields": {}}


def test_a_page_no_route_matches_is_still_an_html_404(client_for):
    response = client_for("alice").get("/no-such-page/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("who, path, body, field", [
    ("adam", "members/", {"user": BIG, "role": "labeler"}, "user"),
    ("sam", "start-stage/", {"stage": "sft", "inputs": [BIG]}, "inputs"),
], ids=["member id", "stage inputs"])
def test_an_id_too_large_for_the_database_is_a_400_naming_the_field(client_for, project_a, who, path, body, field):
    response = client_for(who).post(f"/api/projects/{project_a.pk}/{path}", body, format="json")
    assert response.status_code == 400, response.content[:300]
    assert field in response.json()["fields"]
