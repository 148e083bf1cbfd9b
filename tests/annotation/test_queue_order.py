"""The queue order each slot carries (its task's done count, whether the task is open, whether it is gold) stays
its task's through every change of the task or the slot, so the claim, which reads only the slots' copy in
its index, serves the right task first and never a closed one.

alice and carol label project A; adam administers it; sam is a site admin."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.utils import timezone

from annotation import gold, services
from annotation.models import Task, TaskSlot
from tests.factories import best_first, make_ranking_task


def slots_out_of_order() -> list[tuple]:
    """Free slots whose copy of the queue order differs from their task (leased and done ones may lag)."""
    return [(slot.pk, slot.task_id, slot.task_done_count, slot.task_open, slot.task_is_gold)
            for slot in TaskSlot.objects.filter(status=TaskSlot.Status.FREE).select_related("task")
            if (slot.task_done_count, slot.task_open, slot.task_is_gold)
            != (slot.task.done_count, slot.task.status == Task.Status.OPEN, slot.task.is_gold)]


@pytest.fixture
def three_way(project_a):
    """Project A with overlap 3: each task wants three labelers."""
    project_a.overlap = 3
    project_a.save()
    return project_a


def lease(user, project) -> Task:
    return Task.objects.select_related("project").get(pk=services.next_task(user=user, project=project,
                                                                            kind="ranking").task_id)


def test_a_submission_moves_its_tasks_free_slots_up_the_queue(three_way, users):
    task = make_ranking_task(three_way)
    make_ranking_task(three_way)
    services.submit_ranking(labeler=users["carol"], task=lease(users["carol"], three_way),
                            entries=best_first(task), seconds_spent=1)
    assert set(TaskSlot.objects.filter(task=task, status="free").values_list("task_done_count", flat=True)) == {1}
    assert slots_out_of_order() == []


@pytest.mark.parametrize("give_back", ["skip", "release", "expire", "delete the user"])
def test_a_slot_given_back_takes_its_tasks_place_in_the_queue(three_way, users, give_back):
    """alice's slot stops following its task while she holds it (carol submits meanwhile); given back, it
    must catch up, or the task would be served out of order."""
    task = make_ranking_task(three_way)
    assert lease(users["alice"], three_way) == task
    services.submit_ranking(labeler=users["carol"], task=lease(users["carol"], three_way),
                            entries=best_first(task), seconds_spent=1)
    if give_back == "skip":
        services.skip_task(labeler=users["alice"], task=task, reason="unsure")
    elif give_back == "release":
        services.release_task(labeler=users["alice"], task=task)
    elif give_back == "expire":
        TaskSlot.objects.filter(labeler=users["alice"]).update(lease_expires=timezone.now() - timedelta(seconds=1))
        assert services.expire_leases() == 1
    else:
        users["alice"].delete()
    assert TaskSlot.objects.filter(task=task, status="free").count() == 2
    assert slots_out_of_order() == []


def test_marking_and_unmarking_gold_moves_the_task_between_the_queues(three_way, users):
    task = make_ranking_task(three_way)
    gold.mark_gold(admin=users["adam"], task=task, gold_ranks={str(e["candidate"]): e["rank"]
                                                               for e in best_first(task)})
    assert TaskSlot.objects.filter(task=task).count() > 3  # a slot per member, and spares
    assert set(TaskSlot.objects.filter(task=task).values_list("task_is_gold", flat=True)) == {True}
    assert slots_out_of_order() == []
    assert services.next_task(user=users["alice"], project=three_way, kind="ranking") is None  # gold alone: no
    gold.unmark_gold(admin=users["adam"], task=task)
    assert slots_out_of_order() == []
    assert services.next_task(user=users["alice"], project=three_way, kind="ranking").task_id == task.pk


def test_a_task_cancelled_in_the_admin_leaves_the_queue_and_comes_back_when_reopened(three_way, users):
    cancelled = make_ranking_task(three_way)
    other = make_ranking_task(three_way)
    task_admin = admin.site._registry[Task]
    request = RequestFactory().post("/admin/")
    request.user = users["sam"]

    class StatusEdit:
        changed_data = ["status"]

    cancelled.status = Task.Status.CANCELLED
    task_admin.save_model(request, cancelled, StatusEdit(), change=True)
    assert slots_out_of_order() == []
    assert services.next_task(user=users["alice"], project=three_way, kind="ranking").task_id == other.pk
    cancelled.status = Task.Status.OPEN
    task_admin.save_model(request, cancelled, StatusEdit(), change=True)
    assert services.next_task(user=users["carol"], project=three_way, kind="ranking").task_id == cancelled.pk


def test_a_closed_task_is_never_served_even_if_its_slots_lag(three_way, users):
    """A task closed without telling its slots (a raw UPDATE, a race with a slot given back): the claim
    checks the task row too."""
    closed = make_ranking_task(three_way)
    other = make_ranking_task(three_way)
    Task.objects.filter(pk=closed.pk).update(status=Task.Status.CANCELLED)
    assert slots_out_of_order() != []
    assert services.next_task(user=users["alice"], project=three_way, kind="ranking").task_id == other.pk


def test_an_expired_lease_nearer_to_completion_goes_before_a_free_slot(three_way, users):
    """Expired leases keep their task's place: the task nearest to completion first, as for free slots."""
    nearer = make_ranking_task(three_way)
    fresh = make_ranking_task(three_way)
    for name in ("alice", "carol"):
        assert lease(users[name], three_way) == nearer
    services.submit_ranking(labeler=users["carol"], task=nearer, entries=best_first(nearer), seconds_spent=1)
    TaskSlot.objects.filter(labeler=users["alice"]).update(lease_expires=timezone.now() - timedelta(seconds=1))
    assert lease(users["rita"], three_way) == nearer  # a free slot of `nearer` (1 of 3 done) before `fresh`
    assert lease(users["adam"], three_way) == nearer  # alice's expired lease, still before `fresh`
    assert TaskSlot.objects.get(task=nearer, labeler=users["adam"]).status == TaskSlot.Status.LEASED
    assert fresh.pk > nearer.pk
