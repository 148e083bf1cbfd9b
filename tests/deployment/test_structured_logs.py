"""Structured logs: one record per request with its fields, and LOG_FORMAT=json writes each log line as
one JSON object (what docker-compose runs with)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_each_request_is_logged_with_method_path_status_time_and_user(client_for, project_a, users, caplog):
    with caplog.at_level(logging.INFO, logger="annotation.requests"):
        client_for("alice").get(f"/api/projects/{project_a.pk}/")
    record = next(r for r in caplog.records if r.name == "annotation.requests")
    assert (record.method, record.path, record.status, record.user) == (
        "GET", f"/api/projects/{project_a.pk}/", 200, users["alice"].pk)
    assert record.ms >= 0 and record.getMessage().startswith(f"GET /api/projects/{project_a.pk}/ 200 ")


def test_json_log_lines_are_json_objects_with_the_request_fields(tmp_path):
    code = ("import logging; logging.getLogger('annotation.requests').info('GET / 200 1ms', "
            "extra={'method': 'GET', 'path': '/', 'status': 200, 'ms': 1.0, 'user': None})")
    env = {**os.environ, "LOG_FORMAT": "json", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
           "VAR_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["level"] == "INFO" and line["logger"] == "annotation.requests" and line["status"] == 200
    assert line["message"] == "GET / 200 1ms" and "time" in line
