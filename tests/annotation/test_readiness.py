"""/readyz: 200 when the database, the broker and the artifact disk are usable; 503 naming what is not."""
from __future__ import annotations

import socket

from django.test import Client


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ready_when_every_check_passes(db, settings, tmp_path):
    settings.CELERY_BROKER_URL = "memory://"   # no Redis in this test: the broker check says it skipped
    settings.ARTIFACT_ROOT = tmp_path / "not-made-yet" / "artifacts"
    response = Client().get("/readyz")
    body = response.json()
    assert response.status_code == 200 and body["ok"] is True
    assert body["checks"]["database"]["ok"] and "skipped" in body["checks"]["broker"]
    assert body["checks"]["disk"]["free_gb"] > 0


def test_not_ready_names_an_unreachable_broker_and_a_full_disk(db, settings, tmp_path):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{_closed_port()}/0"
    settings.ARTIFACT_ROOT = tmp_path
    settings.READY_MIN_FREE_GB = 1e9
    response = Client().get("/readyz")
    body = response.json()
    assert response.status_code == 503 and body["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is False and "ConnectionError" in body["checks"]["broker"]["error"]
    assert body["checks"]["disk"]["ok"] is False and "READY_MIN_FREE_GB" in body["checks"]["disk"]["error"]
    assert "Content-Security-Policy" not in response  # JSON, not a page
