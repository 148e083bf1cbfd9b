"""Labeler pages through Django's test client: login, access rules, CSP, and the preview sanitizer."""
from __future__ import annotations

import pytest
from django.test import Client

from annotation import services, stats
from annotation.models import TaskSlot
from tests.factories import best_first, make_ranking_task


@pytest.fixture
def browser_for(users):
    def make(name):
        client = Client()
        client.force_login(users[name])
        return client
    return make


@pytest.mark.parametrize("url", ["/", "/history/", "/p/1/ranking/", "/p/1/write/"])
def test_pages_need_a_login(db, url):
    response = Client().get(url)
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")


def test_getting_the_ranking_page_leases_nothing_and_posting_to_it_leases_the_next_task(browser_for, project_a,
                                                                                       users):
    task = make_ranking_task(project_a, "Rank me")
    client = browser_for("alice")
    response = client.get(f"/p/{project_a.pk}/ranking/")  # a link preview or a prefetch must take no task
    assert response.status_code == 200 and 'data-claim="1"' in response.content.decode()
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert TaskSlot.objects.get(task=task).labeler is None
    assert f'data-task-id="{task.pk}"' not in client.get(f"/p/{project_a.pk}/ranking/panel/").content.decode()
    assert TaskSlot.objects.get(task=task).labeler is None
    response = client.post(f"/p/{project_a.pk}/ranking/panel/")
    assert f'data-task-id="{task.pk}"' in response.content.decode()
    assert TaskSlot.objects.get(task=task).labeler == users["alice"]
    # Once held, a GET shows the held task (a reload keeps the labeler's work) and renews nothing.
    expires = TaskSlot.objects.get(task=task).lease_expires
    assert f'data-task-id="{task.pk}"' in client.get(f"/p/{project_a.pk}/ranking/").content.decode()
    assert TaskSlot.objects.get(task=task).lease_expires == expires


def test_posting_to_the_page_without_script_leases_the_next_task(browser_for, project_a, users):
    task = make_ranking_task(project_a, "Rank me")
    response = browser_for("alice").post(f"/p/{project_a.pk}/ranking/")
    assert response.status_code == 200 and f'data-task-id="{task.pk}"' in response.content.decode()
    assert TaskSlot.objects.get(task=task).labeler == users["alice"]


def test_posting_when_nothing_is_left_says_so(browser_for, project_a):
    body = browser_for("alice").post(f"/p/{project_a.pk}/ranking/panel/").content.decode()
    assert "No ranking tasks are waiting" in body and 'data-claim' not in body


@pytest.mark.parametrize("path", ["ranking/", "demonstration/", "write/", "juggling/", "ranking/panel/"])
def test_another_projects_pages_are_404(browser_for, project_b, path):
    make_ranking_task(project_b)
    assert browser_for("alice").get(f"/p/{project_b.pk}/{path}").status_code == 404
    assert TaskSlot.objects.filter(labeler__isnull=False).count() == 0


def test_a_disabled_kind_has_no_page(browser_for, project_a):
    project_a.demonstrations_enabled = False
    project_a.save()
    assert browser_for("alice").get(f"/p/{project_a.pk}/demonstration/").status_code == 404


def test_the_panel_shows_a_requested_task_only_if_you_hold_it(browser_for, project_a, users):
    task = make_ranking_task(project_a)
    services.next_task(user=users["carol"], project=project_a, kind="ranking")
    body = browser_for("alice").get(f"/p/{project_a.pk}/ranking/panel/?task={task.pk}").content.decode()
    assert "No ranking tasks are waiting" in body and f'data-task-id="{task.pk}"' not in body


def test_only_the_author_opens_a_correction_page(browser_for, project_a, users):
    task = make_ranking_task(project_a)
    ranking, _ = services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=1)
    assert browser_for("alice").get(f"/history/ranking/{ranking.pk}/").status_code == 200
    assert browser_for("rita").get(f"/history/ranking/{ranking.pk}/").status_code == 403
    assert browser_for("carol").get(f"/history/ranking/{ranking.pk}/").status_code == 404
    assert browser_for("bob").get(f"/history/ranking/{ranking.pk}/").status_code == 404


def test_history_lists_only_my_submissions(browser_for, project_a, users):
    mine = make_ranking_task(project_a, "mine to rank")
    theirs = make_ranking_task(project_a, "carol ranks this")
    services.submit_ranking(labeler=users["alice"], task=mine, entries=best_first(mine), seconds_spent=1)
    services.submit_ranking(labeler=users["carol"], task=theirs, entries=best_first(theirs), seconds_spent=1)
    body = browser_for("alice").get("/history/").content.decode()
    assert "mine to rank" in body and "carol ranks this" not in body


def test_the_preview_renders_markdown_and_escapes_html(browser_for):
    client = Client(enforce_csrf_checks=True)
    text = "**hi** <script>alert(1)</script> [x](javascript:alert(2))"
    response = browser_for("alice").post("/preview/", {"text": text})
    html = response.content.decode()
    assert "<strong>hi</strong>" in html and "&lt;script&gt;" in html
    assert "<script" not in html and "javascript:" not in html
    assert client.post("/preview/", {"text": "x"}).status_code in (302, 403)


def test_training_pages_are_for_project_admins(browser_for, project_a, settings, tmp_path):
    from annotation.models import TrainingJob

    settings.ARTIFACT_ROOT = tmp_path
    job = TrainingJob.objects.create(project=project_a, stage="sft", history=[{"step": 1, "train/loss": 2.5}],
                                     log_tail="<script>alert(1)</script> step 1")
    page = browser_for("adam").get(f"/manage/projects/{project_a.pk}/")
    assert page.status_code == 200 and b"Start round" in page.content and f"#{job.pk}".encode() in page.content
    job_page = browser_for("adam").get(f"/manage/jobs/{job.pk}/")
    assert job_page.status_code == 200 and b"&lt;script&gt;alert(1)" in job_page.content
    assert b"<script>alert(1)" not in job_page.content
    assert browser_for("rita").get(f"/manage/projects/{project_a.pk}/").status_code == 403
    assert browser_for("alice").get(f"/manage/jobs/{job.pk}/").status_code == 404
    assert browser_for("bob").get(f"/manage/projects/{project_a.pk}/").status_code == 404



def test_the_home_page_counts_waiting_tasks_up_to_a_cap_and_then_says_more(browser_for, project_a, monkeypatch):
    for i in range(5):
        make_ranking_task(project_a, f"Waiting {i}")
    client = browser_for("alice")
    assert '<span class="count">5</span>' in client.get("/").content.decode()
    monkeypatch.setattr(stats, "WAITING_CAP", 3)  # the count stops reading the queue after 3 tasks
    assert '<span class="count">3+</span>' in client.get("/").content.decode()
    monkeypatch.setattr(stats, "WAITING_CAP", 5)  # exactly at the cap is not "more"
    assert '<span class="count">5</span>' in client.get("/").content.decode()
