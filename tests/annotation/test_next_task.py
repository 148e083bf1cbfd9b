"""POST /api/projects/{id}/next-task/: which task a labeler gets, leasing, order and expiry."""
from __future__ import annotations

import re
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotation import services
from annotation.models import Role, Task, TaskSlot
from tests.factories import best_first, demonstration_task, make_project, make_prompt, make_ranking_task, make_user


def next_task(client, project, kind="ranking"):
    return client.post(f"/api/projects/{project.pk}/next-task/", {"kind": kind})


@pytest.fixture
def alice(client_for):
    return client_for("alice")


def test_it_leases_a_ranking_task_with_its_candidates(alice, project_a, users):
    task = make_ranking_task(project_a, "Say hi", ["hi", "hello", "hey", "yo"])
    response = next_task(alice, project_a)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == task.pk and body["kind"] == "ranking"
    assert body["prompt"]["text"] == "Say hi"
    assert sorted(c["text"] for c in body["candidates"]) == ["hello", "hey", "hi", "yo"]
    assert body["lease_expires"] is not None
    slot = TaskSlot.objects.get(task=task)
    assert slot.status == TaskSlot.Status.LEASED and slot.labeler == users["alice"]


def test_asking_again_returns_the_same_leased_task(alice, project_a):
    make_ranking_task(project_a)
    make_ranking_task(project_a)
    first = next_task(alice, project_a).json()["id"]
    assert next_task(alice, project_a).json()["id"] == first
    assert TaskSlot.objects.filter(status=TaskSlot.Status.LEASED).count() == 1


def test_it_returns_204_when_nothing_is_left(alice, project_a):
    assert next_task(alice, project_a).status_code == 204


def test_a_leased_slot_is_not_handed_to_another_labeler(client_for, project_a):
    make_ranking_task(project_a)  # overlap 1
    assert next_task(client_for("alice"), project_a).status_code == 200
    assert next_task(client_for("carol"), project_a).status_code == 204


def test_overlap_hands_each_task_to_distinct_labelers(client_for, project_a, users):
    project_a.overlap = 2
    project_a.save()
    task = make_ranking_task(project_a)
    assert next_task(client_for("alice"), project_a).json()["id"] == task.pk
    assert next_task(client_for("carol"), project_a).json()["id"] == task.pk
    assert set(TaskSlot.objects.filter(task=task).values_list("labeler__username", flat=True)) == {"alice", "carol"}


def test_it_never_returns_a_task_the_labeler_did_or_skipped(alice, project_a, users):
    project_a.overlap = 2
    project_a.save()
    done = make_ranking_task(project_a)
    skipped = make_ranking_task(project_a)
    services.next_task(user=users["alice"], project=project_a, kind="ranking")
    services.submit_ranking(labeler=users["alice"], task=done, entries=best_first(done), seconds_spent=3)
    services.skip_task(labeler=users["alice"], task=skipped, reason="needs medical knowledge")
    assert next_task(alice, project_a).status_code == 204


def test_tasks_nearest_to_completing_their_overlap_go_first(client_for, project_a, users):
    project_a.overlap = 3
    project_a.save()
    fresh = make_ranking_task(project_a)
    half_done = make_ranking_task(project_a)
    services.next_task(user=users["carol"], project=project_a, kind="ranking")  # carol gets `fresh` (lower id)
    carol_task = Task.objects.get(slots__labeler=users["carol"])
    assert carol_task == fresh
    services.submit_ranking(labeler=users["carol"], task=fresh, entries=best_first(fresh), seconds_spent=1)
    # fresh now has 1 of 3 done; half_done has 0: alice gets fresh first.
    assert next_task(client_for("alice"), project_a).json()["id"] == fresh.pk
    assert half_done.pk != fresh.pk


def test_an_expired_lease_goes_back_to_the_pool(client_for, project_a, users):
    task = make_ranking_task(project_a)
    assert next_task(client_for("alice"), project_a).json()["id"] == task.pk
    TaskSlot.objects.filter(task=task).update(lease_expires=timezone.now() - timedelta(seconds=1))
    response = next_task(client_for("carol"), project_a)
    assert response.json()["id"] == task.pk
    assert TaskSlot.objects.get(task=task).labeler == users["carol"]


def test_the_lease_lasts_the_projects_lease_duration(alice, project_a):
    project_a.lease_seconds = 120
    project_a.save()
    task = make_ranking_task(project_a)
    before = timezone.now()
    next_task(alice, project_a)
    slot = TaskSlot.objects.get(task=task)
    assert timedelta(seconds=119) <= slot.lease_expires - before <= timedelta(seconds=121)


def test_demonstration_tasks_come_from_prompts(alice, project_a):
    prompt = make_prompt(project_a, "Write a haiku about rain")
    body = next_task(alice, project_a, "demonstration").json()
    assert body["id"] == demonstration_task(prompt).pk and body["candidates"] == []


def test_prompt_writing_returns_a_token_to_submit_with(alice, project_a):
    body = next_task(alice, project_a, "prompt_writing").json()
    assert body["kind"] == "prompt_writing" and len(body["client_token"]) == 36


def test_a_disabled_kind_is_a_400(alice, project_a):
    project_a.rankings_enabled = False
    project_a.save()
    response = next_task(alice, project_a)
    assert response.status_code == 400
    assert response.json()["fields"]["kind"]


def test_an_unknown_kind_is_a_400_with_a_field_message(alice, project_a):
    response = next_task(alice, project_a, "juggling")
    assert response.status_code == 400
    assert "kind" in response.json()["fields"]


def test_a_labeler_gets_nothing_from_another_project(client_for, project_a, project_b):
    make_ranking_task(project_b)
    assert next_task(client_for("alice"), project_b).status_code == 404
    assert TaskSlot.objects.filter(status=TaskSlot.Status.LEASED).count() == 0


def test_release_returns_the_slot_to_the_pool(client_for, project_a):
    task = make_ranking_task(project_a)
    next_task(client_for("alice"), project_a)
    assert client_for("alice").post(f"/api/tasks/{task.pk}/release/").status_code == 204
    assert TaskSlot.objects.get(task=task).status == TaskSlot.Status.FREE
    assert next_task(client_for("carol"), project_a).json()["id"] == task.pk


def test_releasing_a_task_you_do_not_hold_is_a_409(client_for, project_a):
    task = make_ranking_task(project_a)
    assert client_for("alice").post(f"/api/tasks/{task.pk}/release/").status_code == 409


def test_deleting_a_user_who_holds_a_lease_frees_it_for_the_others(client_for, project_a, users):
    make_ranking_task(project_a, "held by carol")
    held = next_task(client_for("carol"), project_a)
    assert held.status_code == 200
    users["carol"].delete()  # was a 500: the slot's labeler became NULL on a slot still marked leased
    slot = TaskSlot.objects.get(task_id=held.json()["id"])
    assert slot.status == TaskSlot.Status.FREE and slot.labeler is None and slot.lease_expires is None
    again = next_task(client_for("alice"), project_a)
    assert again.status_code == 200 and again.json()["id"] == held.json()["id"]


def test_a_user_with_labels_cannot_be_deleted_and_keeps_their_labels(project_a, users):
    from django.db.models import ProtectedError

    task = make_ranking_task(project_a, "ranked by carol")
    services.submit_ranking(labeler=users["carol"], task=task, entries=best_first(task), seconds_spent=2)
    with pytest.raises(ProtectedError):
        users["carol"].delete()
    assert task.rankings.count() == 1


def test_a_held_lease_taken_over_after_it_expired_is_not_handed_out(project_a, users):
    lost = make_ranking_task(project_a, "taken over meanwhile")
    other = make_ranking_task(project_a, "still free")
    services.next_task(user=users["alice"], project=project_a, kind="ranking")
    TaskSlot.objects.filter(task=lost).update(lease_expires=timezone.now() - timedelta(seconds=1))
    services.next_task(user=users["carol"], project=project_a, kind="ranking")  # carol takes the expired slot
    assert TaskSlot.objects.get(task=lost).labeler == users["carol"]
    lease = services.next_task(user=users["alice"], project=project_a, kind="ranking")
    assert lease.task_id == other.pk
    assert TaskSlot.objects.get(task=other).labeler == users["alice"]
    assert TaskSlot.objects.get(task=lost).labeler == users["carol"]


def wait_until_a_statement_waits_for_a_lock(seconds: float = 10) -> bool:
    with connection.cursor() as cursor:
        for _ in range(int(seconds / 0.01)):
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # else the view holds still within a transaction
            cursor.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            if cursor.fetchone()[0]:
                return True
            time.sleep(0.01)
    return False


@pytest.mark.postgres
def test_a_held_lease_taken_over_while_the_claim_waits_for_it_is_not_handed_out(transactional_db, postgres_db):
    """Regression: the held-lease path ignored its UPDATE's result. alice's claim picks her expired lease from
    its snapshot while carol's takeover of that slot is not yet committed; the UPDATE waits for carol's row
    lock, then finds the slot is carol's. alice must not be told she holds it: she gets the next task."""
    alice, carol = make_user("alice"), make_user("carol")
    project = make_project("race", members={alice: Role.LABELER, carol: Role.LABELER})
    lost, other = make_ranking_task(project), make_ranking_task(project)
    services.next_task(user=alice, project=project, kind="ranking")
    TaskSlot.objects.filter(task=lost).update(lease_expires=timezone.now() - timedelta(seconds=1))
    takeover_open, result = threading.Event(), {}

    def carol_takes_it_over():
        try:
            with transaction.atomic():
                later = timezone.now() + timedelta(hours=1)
                TaskSlot.objects.filter(task=lost).update(labeler=carol, lease_expires=later)
                takeover_open.set()
                result["alice_waited"] = wait_until_a_statement_waits_for_a_lock()  # then commit
        finally:
            connections.close_all()

    thread = threading.Thread(target=carol_takes_it_over)
    thread.start()
    assert takeover_open.wait(10)
    lease = services.next_task(user=alice, project=project, kind="ranking")
    thread.join(10)
    assert result.get("alice_waited"), "alice's claim never waited for carol's row lock: the race was not run"
    assert lease.task_id == other.pk
    assert TaskSlot.objects.get(task=lost).labeler == carol
    assert TaskSlot.objects.get(task=other).labeler == alice


def test_undoing_a_skip_locks_the_labelers_row_first_as_next_task_does(project_a, users):
    """Regression: undo_skip did not lock the user row, so it could race the labeler's own next-task
    request (on PostgreSQL the two could leave the labeler holding two tasks of a kind)."""
    task = make_ranking_task(project_a)
    services.next_task(user=users["alice"], project=project_a, kind="ranking")
    services.skip_task(labeler=users["alice"], task=task, reason="unsure")
    with CaptureQueriesContext(connection) as queries:
        services.undo_skip(labeler=users["alice"], task=task)
    first = next(q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"])
    if connection.vendor == "postgresql":
        assert re.fullmatch(r"SELECT .* FROM auth_user WHERE id = \d+ FOR NO KEY UPDATE", first), first
    else:  # SQLite: every transaction takes the write lock at BEGIN, so the two run one after the other
        assert connection.settings_dict["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
