"""While the database cannot answer (a restart, a failover, a lock), requests get 503 with Retry-After,
which tells clients to send the same request again, rather than a 500 that reads as a bug."""
from __future__ import annotations

import pytest
from django.db import OperationalError
from django.test import Client

from annotation import services, stats


@pytest.fixture
def database_down(monkeypatch):
    def fail(**kwargs):
        raise OperationalError("connection to server on socket failed: the database system is starting up")

    return fail


def test_an_api_call_gets_503_with_retry_after_and_the_error_shape(client_for, project_a, database_down, monkeypatch):
    monkeypatch.setattr(services, "next_task", database_down)
    response = client_for("alice").post(f"/api/projects/{project_a.pk}/next-task/", {"kind": "ranking"},
                                        format="json")
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert response.json()["code"] == "database_unavailable"
    assert response.json()["status"] == 503


def test_a_page_gets_503_with_retry_after(users, project_a, database_down, monkeypatch):
    monkeypatch.setattr(stats, "labeler_stats", database_down)
    client = Client()
    client.force_login(users["alice"])
    response = client.get("/")
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert b"database is unavailable" in response.content


def test_other_server_errors_are_not_dressed_up_as_503(client_for, project_a, monkeypatch):
    def broken(**kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(services, "next_task", broken)
    client = client_for("alice")
    client.raise_request_exception = False
    response = client.post(f"/api/projects/{project_a.pk}/next-task/", {"kind": "ranking"}, format="json")
    assert response.status_code == 500
