"""Correcting a past submission while its round is open: it replaces the old one, never counts twice."""
from __future__ import annotations

import pytest

from annotation import services
from annotation.models import Demonstration, Ranking, RankingEntry, Round
from tests.factories import best_first, demonstration_task, make_prompt, make_ranking_task


@pytest.fixture
def ranked(project_a, users):
    task = make_ranking_task(project_a)
    ranking, _ = services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=5)
    return ranking


def test_a_correction_replaces_the_ranking_in_place(client_for, ranked):
    entries = list(reversed(best_first(ranked.task)))
    for i, e in enumerate(entries):
        e["rank"] = i + 1
    entries[0]["harmful"] = True
    response = client_for("alice").post(f"/api/rankings/{ranked.pk}/correct/",
                                        {"entries": entries, "seconds_spent": 3, "comment": "fixed"})
    assert response.status_code == 200 and response.json()["id"] == ranked.pk
    ranked.refresh_from_db()
    assert ranked.ranks() == {e["candidate"]: e["rank"] for e in entries}
    assert (ranked.comment, ranked.seconds_spent) == ("fixed", 8)
    assert Ranking.objects.count() == 1 and RankingEntry.objects.count() == 4
    assert RankingEntry.objects.get(candidate_id=entries[0]["candidate"]).harmful
    ranked.task.refresh_from_db()
    assert ranked.task.done_count == 1


def test_an_invalid_correction_changes_nothing(client_for, ranked):
    before = ranked.ranks()
    response = client_for("alice").post(f"/api/rankings/{ranked.pk}/correct/",
                                        {"entries": best_first(ranked.task)[:3], "seconds_spent": 3})
    assert response.status_code == 400
    ranked.refresh_from_db()
    assert ranked.ranks() == before


def test_a_closed_round_refuses_corrections(client_for, ranked):
    ranked.task.round = Round.objects.create(project=ranked.task.project, number=1, status="training")
    ranked.task.save()
    response = client_for("alice").post(f"/api/rankings/{ranked.pk}/correct/",
                                        {"entries": best_first(ranked.task), "seconds_spent": 1})
    assert response.status_code == 409


def test_only_the_author_corrects(client_for, ranked):
    body = {"entries": best_first(ranked.task), "seconds_spent": 1}
    assert client_for("rita").post(f"/api/rankings/{ranked.pk}/correct/", body).status_code == 403
    assert client_for("carol").post(f"/api/rankings/{ranked.pk}/correct/", body).status_code == 404
    assert client_for("bob").post(f"/api/rankings/{ranked.pk}/correct/", body).status_code == 404


def test_a_demonstration_correction_replaces_its_text(client_for, project_a, users):
    task = demonstration_task(make_prompt(project_a))
    demo, _ = services.submit_demonstration(author=users["alice"], task=task, text="first try", seconds_spent=10)
    response = client_for("alice").post(f"/api/demonstrations/{demo.pk}/correct/",
                                        {"text": "better answer", "seconds_spent": 5})
    assert response.status_code == 200
    demo.refresh_from_db()
    assert (demo.text, demo.seconds_spent) == ("better answer", 15) and Demonstration.objects.count() == 1
