"""Path ids that are not integers are a 404, never a server error (schemathesis found 33 500s)."""
from __future__ import annotations

import pytest

from annotation.api.urls import router

BAD_IDS = ["null,null", "abc", "1.5", "-1", "%20"]


def detail_paths() -> list[str]:
    """Every detail and detail-action route the API router makes, with the id left as {id}."""
    paths = []
    for prefix, viewset, _ in router.registry:
        paths.append(f"/api/{prefix}/{{id}}/")
        for action in viewset.get_extra_actions():
            if action.detail:
                paths.append(f"/api/{prefix}/{{id}}/{action.url_path}/")
    return paths


@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_path_id_that_is_not_an_integer_is_not_found_on_every_detail_route(client_for, bad):
    client = client_for("sam")  # staff: nothing is hidden by permissions
    for template in detail_paths():
        for method in ("get", "post", "patch", "delete"):
            response = getattr(client, method)(template.format(id=bad), {}, format="json")
            assert response.status_code in (404, 405), (method, template, bad, response.status_code)


def test_an_integer_id_still_reaches_its_view(client_for, project_a):
    response = client_for("sam").get(f"/api/projects/{project_a.pk}/")
    assert response.status_code == 200


def test_the_published_schema_only_allows_digits_in_path_ids(client_for):
    schema = client_for("sam").get("/api/schema/?format=json").json()
    ids = [param for item in schema["paths"].values() for op in item.values() if isinstance(op, dict)
           for param in op.get("parameters", [])
           if param["in"] == "path" and param["name"] not in ("name", "token_key")]
    assert ids and all(param["schema"]["type"] == "integer" or param["schema"].get("pattern") == "^[0-9]+$"
                       for param in ids), ids  # (a snapshot's file name and a token's key have their own patterns)


def test_a_format_suffix_on_an_action_is_not_found_rather_than_a_server_error(client_for, project_a):
    """Regression: /api/projects/{id}/members.json reached the action with an unexpected ``format``
    argument (TypeError, 500). The API speaks JSON only and has no format-suffix routes."""
    client = client_for("sam")
    for path in (f"/api/projects/{project_a.pk}/members.json", f"/api/projects/{project_a.pk}.json",
                 "/api/projects.json"):
        assert client.get(path).status_code == 404, path
    assert client.get(f"/api/projects/{project_a.pk}/members/").status_code == 200
