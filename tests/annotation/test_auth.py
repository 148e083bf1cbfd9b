"""Token auth for scripts and session auth (with CSRF) for the browser."""
from __future__ import annotations

from django.test import Client
from rest_framework.test import APIClient

from tests.factories import make_ranking_task


def test_a_token_from_username_and_password_authenticates(users, project_a):
    anonymous = APIClient()
    response = anonymous.post("/api/auth/token/", {"username": "alice", "password": "pw"})
    assert response.status_code == 200
    client = APIClient(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    assert [p["name"] for p in client.get("/api/projects/").json()["results"]] == ["A"]


def test_a_wrong_password_gets_no_token_and_a_field_shaped_error(users):
    response = APIClient().post("/api/auth/token/", {"username": "alice", "password": "nope"})
    assert response.status_code == 400 and response.json()["fields"]["non_field_errors"]


def test_a_bad_token_is_a_401(users):
    assert APIClient(HTTP_AUTHORIZATION="Token nonsense").get("/api/projects/").status_code == 401


def test_session_auth_needs_the_csrf_token_for_writes(users, project_a):
    make_ranking_task(project_a)
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["alice"])
    url = f"/api/projects/{project_a.pk}/next-task/"
    assert client.get("/api/projects/").status_code == 200
    refused = client.post(url, {"kind": "ranking"}, content_type="application/json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["message"]
    client.get("/api/docs/")  # any page that sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    accepted = client.post(url, {"kind": "ranking"}, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 200
