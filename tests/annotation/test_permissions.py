"""Every endpoint × every role: who may do what (see tests/conftest.py for who everyone is).

Outsiders get 404 rather than 403 for another project's objects, so existence never leaks; a member
whose role is too low gets 403; anonymous requests get 401.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from knox.models import AuthToken

from annotation import memberships, services
from annotation.models import ModelVersion, Prompt, Role, Round
from tests.factories import best_first, demonstration_task, make_prompt, make_ranking_task

ROLES = [None, "olga", "bob", "alice", "rita", "adam", "sam"]


@pytest.fixture
def world(project_a, project_b, users, settings, tmp_path):
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    project_a.overlap = 3  # any member of A may still submit
    project_a.save()
    ranked = make_ranking_task(project_a, "already ranked by alice")
    services.submit_ranking(labeler=users["alice"], task=ranked, entries=best_first(ranked), seconds_spent=5)
    demo = demonstration_task(make_prompt(project_a, "already demonstrated by alice"))
    services.submit_demonstration(author=users["alice"], task=demo, text="an answer", seconds_spent=5)
    written, _ = services.write_prompt(author=users["alice"], project=project_a, item={"text": "alice wrote this"},
                                       client_token=uuid.uuid4())
    round_ = Round.objects.create(project=project_a, number=1)
    version = ModelVersion.objects.create(project=project_a, stage="sft", round=round_, artifact_path="a/sft")
    from annotation.loop.snapshots import create_snapshot
    from annotation.models import Candidate, TrainingJob

    snapshot = create_snapshot(project=project_a)
    job = TrainingJob.objects.create(project=project_a, stage="sft", snapshot=snapshot)
    generated = Candidate.objects.create(prompt=ranked.prompt, text="from a model", origin="model",
                                         model_version=version)
    invitation, secret = memberships.invite(admin=users["adam"], project=project_a, role=Role.LABELER)
    token, _ = AuthToken.objects.create(user=users["alice"])
    return {
        "token_key": token.token_key,
        "invitation": invitation, "secret": secret,
        "snapshot": snapshot, "job": job, "generated": generated,
        "A": project_a, "B": project_b, "ranking": ranked.rankings.get(), "demonstration": demo.demonstrations.get(),
        "open_task": make_ranking_task(project_a, "open ranking task"),
        "open_demo": demonstration_task(make_prompt(project_a, "open demo prompt")),
        "prompt": make_prompt(project_a, "an imported prompt"), "written": written,
        "round": round_, "version": version, "users": users,
    }


@dataclass
class Case:
    name: str
    method: str
    url: Callable[[dict], str]
    expect: dict  # role → status; roles not listed get `default`
    default: int
    body: Callable[[dict], dict] | None = None


MEMBERS_OK = {"alice": 200, "rita": 200, "adam": 200, "sam": 200}
OUTSIDERS_404 = {"olga": 404, "bob": 404}
ANON = {None: 401}


def ranking_body(w):
    return {"entries": best_first(w["open_task"]), "seconds_spent": 3}


CASES = [
    Case("list projects", "get", lambda w: "/api/projects/", {**ANON}, 200),
    Case("get project", "get", lambda w: f"/api/projects/{w['A'].pk}/", {**ANON, **OUTSIDERS_404}, 200),
    Case("update project", "patch", lambda w: f"/api/projects/{w['A'].pk}/",
         {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403}, 200, lambda w: {"guidelines": "# New"}),
    Case("create project", "post", lambda w: "/api/projects/", {**ANON, "sam": 201}, 403,
         lambda w: {"name": "C", "k": 3}),
    Case("delete project", "delete", lambda w: f"/api/projects/{w['B'].pk}/",
         {**ANON, "bob": 403, "sam": 204}, 404),
    Case("list members", "get", lambda w: f"/api/projects/{w['A'].pk}/members/",
         {**ANON, **OUTSIDERS_404, "alice": 403}, 200),
    # A project admin cannot add an account (nor learn whether an id exists): only site staff can.
    Case("add member", "post", lambda w: f"/api/projects/{w['A'].pk}/members/",
         {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403, "adam": 404, "sam": 201}, 0,
         lambda w: {"user": w["users"]["olga"].pk, "role": Role.LABELER}),
    Case("change a member's role", "post", lambda w: f"/api/projects/{w['A'].pk}/members/",
         {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403}, 200,
         lambda w: {"user": w["users"]["carol"].pk, "role": Role.REVIEWER}),
    Case("remove a member", "delete", lambda w: f"/api/projects/{w['A'].pk}/members/{w['users']['carol'].pk}/",
         {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403}, 204),
    Case("list invitations", "get", lambda w: f"/api/projects/{w['A'].pk}/invitations/",
         {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403}, 200),
    Case("invite", "post", lambda w: f"/api/projects/{w['A'].pk}/invitations/",
         {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403}, 201, lambda w: {"role": Role.REVIEWER}),
    Case("revoke an invitation", "post",
         lambda w: f"/api/projects/{w['A'].pk}/invitations/{w['invitation'].pk}/revoke/",
         {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403}, 200),
    # Whoever holds the link may accept it; members already in the project get a 409.
    Case("accept an invitation", "post", lambda w: "/api/invitations/accept/",
         {**ANON, "alice": 409, "rita": 409, "adam": 409}, 200, lambda w: {"secret": w["secret"]}),
    Case("decline an invitation", "post", lambda w: "/api/invitations/decline/", {**ANON}, 204,
         lambda w: {"secret": w["secret"]}),
    Case("next task", "post", lambda w: f"/api/projects/{w['A'].pk}/next-task/", {**ANON, **OUTSIDERS_404}, 200,
         lambda w: {"kind": "ranking"}),
    Case("write prompt", "post", lambda w: f"/api/projects/{w['A'].pk}/write-prompt/", {**ANON, **OUTSIDERS_404}, 201,
         lambda w: {"text": f"new prompt {uuid.uuid4()}", "client_token": str(uuid.uuid4())}),
    Case("list prompts", "get", lambda w: "/api/prompts/", {**ANON}, 200),
    Case("get prompt", "get", lambda w: f"/api/prompts/{w['prompt'].pk}/",
         {**ANON, **OUTSIDERS_404, "alice": 404}, 200),
    Case("get own written prompt", "get", lambda w: f"/api/prompts/{w['written'].pk}/",
         {**ANON, **OUTSIDERS_404}, 200),
    Case("create prompt", "post", lambda w: "/api/prompts/", {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403},
         201, lambda w: {"project": w["A"].pk, "text": "brand new"}),
    Case("update prompt", "patch", lambda w: f"/api/prompts/{w['prompt'].pk}/",
         {**ANON, **OUTSIDERS_404, "alice": 404, "rita": 403}, 200, lambda w: {"tags": ["x"]}),
    Case("delete prompt", "delete", lambda w: f"/api/prompts/{w['prompt'].pk}/",
         {**ANON, **OUTSIDERS_404, "alice": 404, "rita": 403}, 204),
    Case("bulk prompts", "post", lambda w: "/api/prompts/bulk/", {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403},
         201, lambda w: {"project": w["A"].pk, "items": [{"text": "one"}, {"text": "two"}]}),
    Case("list tasks", "get", lambda w: "/api/tasks/", {**ANON}, 200),
    Case("get task", "get", lambda w: f"/api/tasks/{w['open_task'].pk}/", {**ANON, **OUTSIDERS_404}, 200),
    Case("submit ranking", "post", lambda w: f"/api/tasks/{w['open_task'].pk}/submit-ranking/",
         {**ANON, **OUTSIDERS_404}, 201, ranking_body),
    Case("submit demonstration", "post", lambda w: f"/api/tasks/{w['open_demo'].pk}/submit-demonstration/",
         {**ANON, **OUTSIDERS_404}, 201, lambda w: {"text": "ideal answer", "seconds_spent": 9}),
    Case("skip", "post", lambda w: f"/api/tasks/{w['open_task'].pk}/skip/", {**ANON, **OUTSIDERS_404}, 201,
         lambda w: {"reason": "not my field"}),
    Case("undo skip", "post", lambda w: f"/api/tasks/{w['open_task'].pk}/undo-skip/", {**ANON, **OUTSIDERS_404}, 204),
    Case("release", "post", lambda w: f"/api/tasks/{w['open_task'].pk}/release/", {**ANON, **OUTSIDERS_404}, 409),
    Case("list rankings", "get", lambda w: "/api/rankings/", {**ANON}, 200),
    Case("get ranking", "get", lambda w: f"/api/rankings/{w['ranking'].pk}/", {**ANON, **OUTSIDERS_404}, 200),
    Case("list demonstrations", "get", lambda w: "/api/demonstrations/", {**ANON}, 200),
    Case("get demonstration", "get", lambda w: f"/api/demonstrations/{w['demonstration'].pk}/",
         {**ANON, **OUTSIDERS_404}, 200),
    Case("list rounds", "get", lambda w: "/api/rounds/", {**ANON}, 200),
    Case("get round", "get", lambda w: f"/api/rounds/{w['round'].pk}/", {**ANON, **OUTSIDERS_404, "alice": 404}, 200),
    Case("list model versions", "get", lambda w: "/api/model-versions/", {**ANON}, 200),
    Case("get model version", "get", lambda w: f"/api/model-versions/{w['version'].pk}/",
         {**ANON, **OUTSIDERS_404, "alice": 404}, 200),
    Case("my stats", "get", lambda w: "/api/me/stats/", {**ANON}, 200),
    # Alice's labels are in the world's snapshot, so even she can no longer correct them (409).
    Case("correct own ranking", "post", lambda w: f"/api/rankings/{w['ranking'].pk}/correct/",
         {**ANON, **OUTSIDERS_404, "alice": 409}, 403,
         lambda w: {"entries": best_first(w["ranking"].task), "seconds_spent": 1}),
    Case("correct own demonstration", "post", lambda w: f"/api/demonstrations/{w['demonstration'].pk}/correct/",
         {**ANON, **OUTSIDERS_404, "alice": 409}, 403, lambda w: {"text": "better", "seconds_spent": 1}),
    Case("list jobs", "get", lambda w: "/api/jobs/", {**ANON}, 200),
    Case("get job", "get", lambda w: f"/api/jobs/{w['job'].pk}/", {**ANON, **OUTSIDERS_404, "alice": 404}, 200),
    Case("cancel job", "post", lambda w: f"/api/jobs/{w['job'].pk}/cancel/",
         {**ANON, **OUTSIDERS_404, "alice": 404, "rita": 403}, 200),
    Case("retry job (still queued: 409)", "post", lambda w: f"/api/jobs/{w['job'].pk}/retry/",
         {**ANON, **OUTSIDERS_404, "alice": 404, "rita": 403}, 409),
    Case("list snapshots", "get", lambda w: "/api/snapshots/", {**ANON}, 200),
    Case("get snapshot", "get", lambda w: f"/api/snapshots/{w['snapshot'].pk}/",
         {**ANON, **OUTSIDERS_404, "alice": 404}, 200),
    Case("start round (no base model: 400)", "post", lambda w: f"/api/projects/{w['A'].pk}/start-round/",
         {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403}, 400, lambda w: {"config": {}}),
    Case("start one stage", "post", lambda w: f"/api/projects/{w['A'].pk}/start-stage/",
         {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403}, 201,
         lambda w: {"stage": "sft", "inputs": [w["version"].pk]}),
    Case("cancel round (not training: 409)", "post", lambda w: f"/api/rounds/{w['round'].pk}/cancel/",
         {**ANON, **OUTSIDERS_404, "alice": 404, "rita": 403}, 409),
    Case("model lineage", "get", lambda w: f"/api/model-versions/{w['version'].pk}/lineage/",
         {**ANON, **OUTSIDERS_404, "alice": 404}, 200),
    Case("candidate lineage", "get", lambda w: f"/api/candidates/{w['generated'].pk}/lineage/",
         {**ANON, **OUTSIDERS_404, "alice": 403}, 200),
    # Datasets (issue 11): import and export are the admins'; quality and the review queue the reviewers'.
    Case("export", "get", lambda w: f"/api/projects/{w['A'].pk}/export/?format=listwise",
         {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403}, 200),
    Case("import (no file: 400)", "post", lambda w: f"/api/projects/{w['A'].pk}/import/",
         {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403}, 400, lambda w: {"format": "items"}),
    Case("quality report", "get", lambda w: f"/api/projects/{w['A'].pk}/quality/",
         {**ANON, **OUTSIDERS_404, "alice": 403}, 200),
    Case("review queue", "get", lambda w: f"/api/projects/{w['A'].pk}/review-queue/",
         {**ANON, **OUTSIDERS_404, "alice": 403}, 200),
    Case("a task's gold status", "get", lambda w: f"/api/tasks/{w['open_task'].pk}/gold/",
         {**ANON, **OUTSIDERS_404, "alice": 403}, 200),
    Case("mark a task gold", "post", lambda w: f"/api/tasks/{w['open_task'].pk}/gold/",
         {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403}, 200,
         lambda w: {"gold_ranks": {str(c.pk): rank
                                   for rank, c in enumerate(w["open_task"].candidates.order_by("id"), 1)}}),
    Case("unmark a gold task", "delete", lambda w: f"/api/tasks/{w['open_task'].pk}/gold/",
         {**ANON, **OUTSIDERS_404, "alice": 403, "rita": 403}, 200),
    # Reviews: reviewers and admins decide, never on their own labels; only the labeler asks for a change.
    Case("review a ranking", "post", lambda w: f"/api/rankings/{w['ranking'].pk}/review/",
         {**ANON, **OUTSIDERS_404, "alice": 403}, 200, lambda w: {"decision": "accept"}),
    Case("review a demonstration", "post", lambda w: f"/api/demonstrations/{w['demonstration'].pk}/review/",
         {**ANON, **OUTSIDERS_404, "alice": 403}, 200, lambda w: {"decision": "accept"}),
    Case("edit a demonstration", "post", lambda w: f"/api/demonstrations/{w['demonstration'].pk}/edit/",
         {**ANON, **OUTSIDERS_404, "alice": 403}, 200, lambda w: {"text": "clearer", "reason": "typo"}),
    Case("ask for a change to own ranking", "post", lambda w: f"/api/rankings/{w['ranking'].pk}/request-change/",
         {**ANON, **OUTSIDERS_404, "alice": 201}, 403, lambda w: {"message": "I swapped two"}),
    Case("ask for a change to own demonstration", "post",
         lambda w: f"/api/demonstrations/{w['demonstration'].pk}/request-change/",
         {**ANON, **OUTSIDERS_404, "alice": 201}, 403, lambda w: {"message": "a typo"}),
    Case("list base models", "get", lambda w: "/api/base-models/", {**ANON}, 200),
    Case("a snapshot's file", "get", lambda w: f"/api/snapshots/{w['snapshot'].pk}/files/sft.jsonl/",
         {**ANON, **OUTSIDERS_404, "alice": 404}, 200),
    Case("schema (public: it describes the API, holds no data)", "get", lambda w: "/api/schema/", {}, 200),
    Case("list my API tokens", "get", lambda w: "/api/auth/tokens/", {**ANON}, 200),
    Case("revoke a token that is not mine (not found, whoever asks)", "delete",
         lambda w: f"/api/auth/tokens/{w['token_key']}/", {**ANON, "alice": 204}, 404),
    Case("log a token out (token auth only)", "post", lambda w: "/api/auth/logout/", {}, 401),
]


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r or "anonymous")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_endpoint_permissions(case, role, world, client_for):
    client = client_for(role)
    body = case.body(world) if case.body else None
    response = getattr(client, case.method)(case.url(world), body, format="json")
    expected = case.expect.get(role, case.default)
    assert response.status_code == expected, (role, response.content[:300])
    if expected >= 400:
        assert set(response.json()) == {"status", "code", "message", "fields"}


def ids(response) -> set[int]:
    return {row["id"] for row in response.json()["results"]}


def test_labelers_list_only_their_projects(world, client_for):
    assert ids(client_for("alice").get("/api/projects/")) == {world["A"].pk}
    assert ids(client_for("bob").get("/api/projects/")) == {world["B"].pk}
    assert ids(client_for("olga").get("/api/projects/")) == set()
    assert ids(client_for("sam").get("/api/projects/")) == {world["A"].pk, world["B"].pk}


def test_labelers_list_only_their_own_submissions(world, client_for):
    assert ids(client_for("alice").get("/api/rankings/")) == {world["ranking"].pk}
    assert ids(client_for("carol").get("/api/rankings/")) == set()
    assert ids(client_for("bob").get("/api/rankings/")) == set()
    assert ids(client_for("rita").get("/api/rankings/")) == {world["ranking"].pk}
    assert client_for("carol").get(f"/api/rankings/{world['ranking'].pk}/").status_code == 404
    assert ids(client_for("carol").get("/api/demonstrations/")) == set()
    assert ids(client_for("alice").get("/api/demonstrations/")) == {world["demonstration"].pk}


def test_labelers_list_only_prompts_they_wrote(world, client_for):
    assert ids(client_for("alice").get("/api/prompts/")) == {world["written"].pk}
    assert ids(client_for("rita").get("/api/prompts/")) == set(Prompt.objects.filter(project=world["A"])
                                                                .values_list("pk", flat=True))
    assert ids(client_for("bob").get("/api/prompts/")) == set()


def test_labelers_list_only_tasks_they_hold_or_did(world, client_for):
    assert ids(client_for("alice").get("/api/tasks/")) == {world["ranking"].task_id, world["demonstration"].task_id}
    assert ids(client_for("bob").get("/api/tasks/")) == set()
    assert len(ids(client_for("rita").get("/api/tasks/"))) == world["A"].tasks.count()


def test_labelers_see_no_rounds_or_model_versions(world, client_for):
    assert ids(client_for("alice").get("/api/rounds/")) == set()
    assert ids(client_for("alice").get("/api/model-versions/")) == set()
    assert ids(client_for("rita").get("/api/model-versions/")) == {world["version"].pk}
