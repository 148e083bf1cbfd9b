"""POST /api/tasks/{id}/submit-ranking/: validation, idempotency and lease rules."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotation import services
from annotation.models import Ranking, RankingEntry, Task, TaskSlot
from tests.factories import best_first, make_ranking_task


def submit(client, task, entries, **extra):
    return client.post(f"/api/tasks/{task.pk}/submit-ranking/", {"entries": entries, "seconds_spent": 12.5, **extra})


@pytest.fixture
def leased(project_a, users):
    """A 4-response ranking task leased to alice."""
    task = make_ranking_task(project_a, "Explain gravity", ["a", "b", "c", "d"])
    services.next_task(user=users["alice"], project=project_a, kind="ranking")
    return task


def test_it_records_ranks_labels_and_time(client_for, leased, users):
    entries = best_first(leased)
    entries[0].update(quality=7)
    entries[3].update(hallucination=True, harmful=True, quality=1)
    response = submit(client_for("alice"), leased, entries, comment="d makes up facts")
    assert response.status_code == 201
    ranking = Ranking.objects.get()
    assert (ranking.labeler, ranking.comment, ranking.seconds_spent) == (users["alice"], "d makes up facts", 12.5)
    assert ranking.ranks() == {e["candidate"]: e["rank"] for e in entries}
    worst = RankingEntry.objects.get(candidate_id=entries[3]["candidate"])
    assert worst.hallucination and worst.harmful and not worst.fails_instruction and worst.quality == 1
    leased.refresh_from_db()
    assert leased.status == Task.Status.COMPLETE and leased.done_count == 1
    assert TaskSlot.objects.get(task=leased).status == TaskSlot.Status.DONE


def test_ties_share_a_rank(client_for, leased):
    entries = best_first(leased)
    entries[1]["rank"] = 1
    entries[2]["rank"] = 2
    entries[3]["rank"] = 3
    assert submit(client_for("alice"), leased, entries).status_code == 201
    assert sorted(RankingEntry.objects.values_list("rank", flat=True)) == [1, 1, 2, 3]


def test_a_retried_submit_returns_the_first_ranking_and_creates_nothing(client_for, leased):
    entries = best_first(leased)
    first = submit(client_for("alice"), leased, entries)
    retry = submit(client_for("alice"), leased, entries)
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json()["id"] == first.json()["id"]
    assert Ranking.objects.count() == 1 and RankingEntry.objects.count() == 4
    leased.refresh_from_db()
    assert leased.done_count == 1


def test_a_different_second_submit_is_a_409_and_changes_nothing(client_for, leased):
    entries = best_first(leased)
    submit(client_for("alice"), leased, entries)
    entries[0]["rank"], entries[3]["rank"] = 4, 1
    response = submit(client_for("alice"), leased, entries)
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert Ranking.objects.get().ranks()[entries[0]["candidate"]] == 1


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda e: e.pop(), "entries"),                                  # a candidate left unranked
        (lambda e: e.append(dict(e[0])), "entries"),                      # a candidate twice
        (lambda e: e[0].update(candidate=999999), "entries"),             # not this task's candidate
        (lambda e: e[3].update(rank=5), "entries"),                       # ranks 1,2,3,5 skip 4
        (lambda e: [x.update(rank=x["rank"] + 1) for x in e], "entries"),  # no rank 1
        (lambda e: e[0].update(rank=0), "entries"),                       # out of range
        (lambda e: e[0].update(quality=8), "entries"),                    # Likert is 1..7
        (lambda e: e[0].update(rank="first"), "entries"),                 # not a number
    ],
)
def test_it_rejects_invalid_rankings_with_field_messages(client_for, leased, mutate, field):
    entries = best_first(leased)
    mutate(entries)
    response = submit(client_for("alice"), leased, entries)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and field in body["fields"]
    assert Ranking.objects.count() == 0
    assert TaskSlot.objects.get(task=leased).status == TaskSlot.Status.LEASED


def test_it_rejects_missing_time_and_negative_time(client_for, leased):
    response = client_for("alice").post(f"/api/tasks/{leased.pk}/submit-ranking/", {"entries": best_first(leased)})
    assert response.status_code == 400 and "seconds_spent" in response.json()["fields"]
    response = submit(client_for("alice"), leased, best_first(leased), seconds_spent=-1)
    assert response.status_code == 400 and "seconds_spent" in response.json()["fields"]
    assert Ranking.objects.count() == 0


def test_submitting_a_demonstration_task_as_a_ranking_is_a_400(client_for, project_a, users):
    from tests.factories import demonstration_task, make_prompt

    task = demonstration_task(make_prompt(project_a))
    response = submit(client_for("alice"), task, [{"candidate": 1, "rank": 1}, {"candidate": 2, "rank": 2}])
    assert response.status_code == 400 and "task" in response.json()["fields"]


def test_an_expired_lease_is_accepted_while_the_slot_is_still_free(client_for, leased):
    TaskSlot.objects.filter(task=leased).update(lease_expires=timezone.now() - timedelta(hours=1))
    assert submit(client_for("alice"), leased, best_first(leased)).status_code == 201


def test_an_expired_lease_is_accepted_after_housekeeping_freed_the_slot(client_for, leased):
    TaskSlot.objects.filter(task=leased).update(lease_expires=timezone.now() - timedelta(hours=1))
    assert services.expire_leases() == 1
    assert submit(client_for("alice"), leased, best_first(leased)).status_code == 201


def test_an_expired_lease_taken_by_someone_else_is_a_409(client_for, leased, project_a, users):
    TaskSlot.objects.filter(task=leased).update(lease_expires=timezone.now() - timedelta(hours=1))
    services.next_task(user=users["carol"], project=project_a, kind="ranking")
    response = submit(client_for("alice"), leased, best_first(leased))
    assert response.status_code == 409
    assert Ranking.objects.count() == 0
    assert TaskSlot.objects.get(task=leased).labeler == users["carol"]


def test_submitting_without_any_lease_takes_a_free_slot(client_for, project_a):
    task = make_ranking_task(project_a)
    assert submit(client_for("carol"), task, best_first(task)).status_code == 201


def test_a_full_task_accepts_no_more_rankings(client_for, leased):
    submit(client_for("alice"), leased, best_first(leased))
    response = submit(client_for("carol"), leased, best_first(leased))
    assert response.status_code == 409
    assert Ranking.objects.count() == 1


def test_a_labeler_cannot_rank_another_projects_task(client_for, project_b):
    task = make_ranking_task(project_b)
    response = submit(client_for("alice"), task, best_first(task))
    assert response.status_code == 404
    assert Ranking.objects.count() == 0


@pytest.mark.parametrize("change, field", [
    (lambda e, x: e[1].update(hallucination=True), "entries.hallucination"),
    (lambda e, x: e[0].update(quality=6), "entries.quality"),
    (lambda e, x: x.update(comment="changed my mind"), "comment"),
])
def test_a_resubmission_with_the_same_ranks_but_other_labels_is_a_409_naming_them(client_for, leased, change, field):
    """It was a 200 that silently dropped the new flags, quality or comment."""
    entries, extra = best_first(leased), {"comment": "first"}
    entries[0]["quality"] = 5
    assert submit(client_for("alice"), leased, entries, **extra).status_code == 201
    change(entries, extra)
    response = submit(client_for("alice"), leased, entries, **extra)
    assert response.status_code == 409 and field in response.json()["message"]
    ranking = Ranking.objects.get()
    assert ranking.comment == "first" and not RankingEntry.objects.filter(hallucination=True).exists()
    assert RankingEntry.objects.get(candidate_id=entries[0]["candidate"]).quality == 5


def test_a_retry_that_only_reports_another_time_is_the_same_ranking(client_for, leased):
    entries = best_first(leased)
    first = client_for("alice").post(f"/api/tasks/{leased.pk}/submit-ranking/",
                                     {"entries": entries, "seconds_spent": 12.5, "comment": "ok"}, format="json")
    retry = client_for("alice").post(f"/api/tasks/{leased.pk}/submit-ranking/",
                                     {"entries": entries, "seconds_spent": 14.0, "comment": "ok"}, format="json")
    assert (first.status_code, retry.status_code) == (201, 200) and retry.json()["id"] == first.json()["id"]


def test_a_ranking_records_the_order_its_candidates_were_shown_in(project_a, users):
    task = make_ranking_task(project_a)
    shown = list(task.task_candidates.order_by("position").values_list("candidate_id", flat=True))
    ranking, _ = services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=1)
    ranking.refresh_from_db()
    assert ranking.shown_order == shown and sorted(shown) == sorted(ranking.ranks())
