"""Correcting a past submission while its round is open: it replaces the old one, never counts twice."""
from __future__ import annotations

import pytest

from annotation import services
from annotation.errors import Conflict
from annotation.loop.snapshots import create_snapshot, verify_snapshot
from annotation.models import Demonstration, LabelRevision, Ranking, RankingEntry, ReviewStatus, Round
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


def _reversed(task) -> list[dict]:
    entries = list(reversed(best_first(task)))
    for i, e in enumerate(entries):
        e["rank"] = i + 1
    return entries


def test_a_correction_is_a_new_revision_and_the_old_one_is_kept(client_for, ranked, users):
    before = ranked.ranks()
    entries = _reversed(ranked.task)
    assert client_for("alice").post(f"/api/rankings/{ranked.pk}/correct/",
                                    {"entries": entries, "seconds_spent": 3, "comment": "fixed"}).status_code == 200
    ranked.refresh_from_db()
    assert ranked.revision == 2
    first, second = LabelRevision.objects.filter(ranking=ranked).order_by("number")
    assert (first.number, second.number) == (1, 2) and first.author == second.author == users["alice"]
    assert {e["candidate"]: e["rank"] for e in first.content["entries"]} == before
    assert {e["candidate"]: e["rank"] for e in second.content["entries"]} == ranked.ranks()
    assert (first.content["comment"], second.content["comment"]) == ("", "fixed")


def test_a_reviewed_ranking_cannot_be_corrected_and_keeps_the_reviewers_decision(client_for, ranked):
    """Regression: a labeler could "correct" a ranking a reviewer had rejected; it returned 200 and went
    back to submitted, so the rejected label flowed into the next snapshot."""
    Ranking.objects.filter(pk=ranked.pk).update(review_status=ReviewStatus.REJECTED)
    response = client_for("alice").post(f"/api/rankings/{ranked.pk}/correct/",
                                        {"entries": _reversed(ranked.task), "seconds_spent": 1})
    assert response.status_code == 409 and "a reviewer has rejected it" in response.json()["message"]
    ranked.refresh_from_db()
    assert ranked.review_status == ReviewStatus.REJECTED and ranked.revision == 1
    assert LabelRevision.objects.filter(ranking=ranked).count() == 1


def test_a_label_in_a_snapshot_cannot_be_corrected_even_without_a_round(client_for, ranked, settings, tmp_path):
    """Regression: tasks without a round (every imported or seeded one) stayed correctable forever, so
    labels already used for training could change under the snapshot that recorded their ids."""
    settings.ARTIFACT_ROOT = str(tmp_path)
    assert ranked.task.round_id is None
    snapshot = create_snapshot(project=ranked.task.project)
    assert snapshot.label_revisions == {"ranking": {str(ranked.pk): 1}, "demonstration": {}}
    response = client_for("alice").post(f"/api/rankings/{ranked.pk}/correct/",
                                        {"entries": _reversed(ranked.task), "seconds_spent": 1})
    assert response.status_code == 409 and "training snapshot" in response.json()["message"]
    assert verify_snapshot(snapshot)


def test_a_snapshot_is_rebuilt_from_the_revisions_it_exported(ranked, settings, tmp_path, users):
    settings.ARTIFACT_ROOT = str(tmp_path)
    services.correct_ranking(labeler=users["alice"], ranking=ranked, entries=_reversed(ranked.task), seconds_spent=1)
    snapshot = create_snapshot(project=ranked.task.project)
    assert snapshot.label_revisions["ranking"] == {str(ranked.pk): 2}
    # Whatever happens to the live rows later (an admin's edit in the database), the snapshot's content is
    # its revisions': it still verifies, and its labels stay frozen.
    RankingEntry.objects.filter(ranking=ranked).update(rank=1)
    assert verify_snapshot(snapshot)
    assert not Ranking.objects.get(pk=ranked.pk).is_correctable()


def test_a_demonstration_correction_keeps_the_original_text(client_for, project_a, users):
    task = demonstration_task(make_prompt(project_a))
    demo, _ = services.submit_demonstration(author=users["alice"], task=task, text="First try.", seconds_spent=2)
    services.correct_demonstration(author=users["alice"], demonstration=demo, text="Better.", seconds_spent=1)
    texts = list(LabelRevision.objects.filter(demonstration=demo).order_by("number").values_list("content", flat=True))
    assert texts == [{"text": "First try."}, {"text": "Better."}]
    Demonstration.objects.filter(pk=demo.pk).update(review_status=ReviewStatus.ACCEPTED)
    demo.refresh_from_db()
    with pytest.raises(Conflict, match="a reviewer has accepted it"):
        services.correct_demonstration(author=users["alice"], demonstration=demo, text="Again.", seconds_spent=1)
