"""Readiness: can this process serve? ``/healthz`` says the process is alive and reaches its database;
``/readyz`` also checks what labeling and training need: the database, the Celery broker (Redis) and
free disk space where artifacts are written. 200 when every check passes, else 503 naming the failures,
so a load balancer or ``depends_on: service_healthy`` can wait for it."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET


def _database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"vendor": connection.vendor}


def _broker() -> dict:
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://")):
        return {"skipped": f"broker is not Redis ({url.split(':', 1)[0]})"}
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    finally:
        client.close()
    return {}


def _disk() -> dict:
    root = Path(settings.ARTIFACT_ROOT)
    existing = next(p for p in (root, *root.parents) if p.exists())  # before the first job makes it
    free_gb = shutil.disk_usage(existing).free / 1e9
    if free_gb < settings.READY_MIN_FREE_GB:
        raise RuntimeError(f"{free_gb:.1f} GB free under {root}, below READY_MIN_FREE_GB={settings.READY_MIN_FREE_GB}")
    return {"free_gb": round(free_gb, 1)}


CHECKS = {"database": _database, "broker": _broker, "disk": _disk}


@require_GET
def readiness(request):
    checks, ok = {}, True
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            checks[name] = {"ok": True, **check()}
        except Exception as exc:  # any failure means not ready; say which and why
            ok = False
            checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        checks[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return JsonResponse({"ok": ok, "checks": checks}, status=200 if ok else 503)
