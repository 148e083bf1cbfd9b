"""Every URL pattern of the site, walked as every kind of user: each HTML page carries the
Content-Security-Policy, and no GET changes anything in the database.

The walk reads the URL configuration itself, so a page or endpoint added later is covered without
editing this test. Each pattern becomes a concrete path with the id of a real object of the right kind.
"""
from __future__ import annotations

import hashlib
import json
import re

import pytest
from django.apps import apps
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import URLResolver, get_resolver

from annotation import services
from annotation.loop.snapshots import create_snapshot
from annotation.models import JobStage, ModelVersion, Round, TrainingJob
from tests.factories import best_first, demonstration_task, make_prompt, make_ranking_task

API_RESOURCES = {  # first path segment after api/ → the fixture object whose id fills (?P<pk>…)
    "projects": "project", "prompts": "prompt", "tasks": "task", "rankings": "ranking",
    "demonstrations": "demonstration", "rounds": "round", "model-versions": "model", "base-models": "base",
    "jobs": "job", "snapshots": "snapshot",
}


def all_routes(resolver=None, prefix: str = ""):
    for pattern in (resolver or get_resolver()).url_patterns:
        if isinstance(pattern, URLResolver):
            yield from all_routes(pattern, prefix + str(pattern.pattern))
        else:
            yield prefix + str(pattern.pattern)


def concrete(route: str, objects: dict) -> str:
    """A path that the route matches, with real ids."""
    path = route.replace("^", "").replace("$", "").replace("/?", "/").replace("\\.", ".")
    resource = path.split("/")[1] if path.startswith("api/") else ""
    admin = re.match(r"admin/(\w+)/(\w+)/", path)
    admin_pk = "1"
    if admin and admin.group(1) in {"annotation", "auth", "authtoken"}:
        model = apps.get_model(admin.group(1), admin.group(2)) if admin.group(1) != "authtoken" else None
        first = model.objects.order_by("pk").first() if model else None
        admin_pk = str(first.pk) if first else "1"
    named = {
        "format": "json", "app_label": "annotation", "url": "", "name": "sft.jsonl",
        "pk": str(objects[API_RESOURCES[resource]].pk) if resource in API_RESOURCES else "1",
        "project_id": str(objects["project"].pk), "job_id": str(objects["job"].pk),
        "ranking_id": str(objects["ranking"].pk), "demonstration_id": str(objects["demonstration"].pk),
        "kind": "ranking", "object_id": admin_pk, "id": admin_pk, "content_type_id": "1",
        "uidb64": "MQ", "token": "set-password",
    }
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: named.get(m.group(1), "1"), path)
    path = re.sub(r"<drf_format_suffix:format>", ".json", path)
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: named.get(m.group(1), "1"), path)


def database_state() -> dict[str, str]:
    """A digest of every table's rows (sessions and last-login times aside: logging in writes them)."""
    state = {}
    for model in apps.get_models():
        if model is Session:
            continue
        rows = [{k: v for k, v in row.items() if k != "last_login"} for row in model.objects.order_by("pk").values()]
        state[model._meta.label] = hashlib.sha256(json.dumps(rows, default=str, sort_keys=True).encode()).hexdigest()
    return state


@pytest.fixture
def objects(project_a, users, settings, tmp_path):
    settings.ARTIFACT_ROOT = str(tmp_path / "artifacts")
    users["sam"].is_superuser = True
    users["sam"].save()
    task = make_ranking_task(project_a, "Rank me")
    make_ranking_task(project_a, "A task left for the walk to (not) take")
    ranking, _ = services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=1)
    demo_task = demonstration_task(make_prompt(project_a, "Explain tides."))
    demonstration, _ = services.submit_demonstration(author=users["alice"], task=demo_task, text="An answer.",
                                                     seconds_spent=1)
    round_ = Round.objects.create(project=project_a, number=1)
    base = ModelVersion.objects.create(project=None, stage=ModelVersion.Stage.BASE, name="walk base",
                                       artifact_path=str(tmp_path / "base"))
    model = ModelVersion.objects.create(project=project_a, stage=ModelVersion.Stage.SFT, name="walk sft",
                                        artifact_path=str(tmp_path / "sft"), parent=base, round=round_)
    job = TrainingJob.objects.create(project=project_a, stage=JobStage.SFT, config={}, round=round_)
    return {"project": project_a, "prompt": task.prompt, "task": task, "ranking": ranking,
            "demonstration": demonstration, "round": round_, "base": base, "model": model, "job": job,
            "snapshot": create_snapshot(project=project_a)}


def walk(client: Client, objects: dict):
    for route in all_routes():
        path = concrete(route, objects)
        for accept in ("text/html", "application/json"):
            yield path, client.get(path, HTTP_ACCEPT=accept)


@pytest.mark.parametrize("who", [None, "alice", "rita", "adam", "sam"])
def test_no_get_anywhere_changes_the_database(objects, users, who):
    client = Client()
    if who:
        client.force_login(users[who])
    before = database_state()
    changed = {}
    for path, _ in walk(client, objects):
        after = database_state()
        if after != before:
            changed[path] = sorted(label for label in after if after[label] != before[label])
            before = after
    assert changed == {}


@pytest.mark.parametrize("who", [None, "alice", "adam", "sam"])
def test_every_html_page_carries_the_content_security_policy(objects, users, who):
    client = Client()
    if who:
        client.force_login(users[who])
    html = {path: response for path, response in walk(client, objects)
            if response.get("Content-Type", "").startswith("text/html")}
    assert len(html) > 10  # the walk reached the pages (login, labeler pages, admin, docs)
    missing = sorted(path for path, response in html.items() if "Content-Security-Policy" not in response)
    assert missing == []
    assert all("script-src 'self'" in r["Content-Security-Policy"] for r in html.values())


def test_the_walk_reaches_the_login_password_and_api_docs_pages(objects, users):
    client = Client()
    client.force_login(users["alice"])
    for path in ("/accounts/password_change/", "/api/docs/"):
        response = client.get(path)
        assert response.status_code == 200 and "script-src 'self'" in response["Content-Security-Policy"]
    response = Client().get("/accounts/login/")
    assert response.status_code == 200 and "script-src 'self'" in response["Content-Security-Policy"]
