"""The production processes really work together: Celery through Redis on both queues, gunicorn
serving the API and its static files."""
from __future__ import annotations

import re
import urllib.request

import pytest

pytestmark = pytest.mark.services


@pytest.mark.parametrize("queue", ["default", "training"])
def test_the_health_task_runs_on_a_real_worker_through_redis(celery_worker, queue):
    from annotation.tasks import health

    result = health.apply_async(queue=queue).get(timeout=60)
    assert result["ok"] and result["database"] in ("sqlite", "postgresql")


def test_the_training_task_route_points_at_the_training_queue(settings):
    assert settings.CELERY_TASK_ROUTES["annotation.tasks.run_training_job"] == {"queue": "training"}


def test_gunicorn_serves_the_api_docs_and_their_static_files(web_server):
    html = urllib.request.urlopen(web_server + "/api/docs/", timeout=10).read().decode()
    assets = re.findall(r'(/static/drf_spectacular_sidecar/[^"]+\.js)', html)
    assert assets, html[:500]
    asset = urllib.request.urlopen(web_server + assets[0], timeout=10)
    assert asset.status == 200 and len(asset.read()) > 10_000


def test_gunicorn_refuses_anonymous_api_calls_with_the_error_shape(web_server):
    import json
    from urllib.error import HTTPError

    with pytest.raises(HTTPError) as err:
        urllib.request.urlopen(web_server + "/api/projects/", timeout=10)
    assert err.value.code == 401
    assert set(json.load(err.value)) == {"status", "code", "message", "fields"}
