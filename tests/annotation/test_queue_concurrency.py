"""The task queue under real concurrency: 32 labelers at once, each in its own thread and database
connection, hammering next-task → submit (with retries) until the queue is empty.

On PostgreSQL this exercises FOR UPDATE SKIP LOCKED and the conditional-UPDATE claim; on SQLite the
serialised IMMEDIATE transactions. Either way: no slot is handed out twice, no task gets more
rankings than its overlap, and no accepted submission is lost.
"""
from __future__ import annotations

import threading
from collections import Counter, defaultdict

import pytest
from django.db import connection, connections

from annotation import services
from annotation.models import Membership, Ranking, RankingEntry, Role, Task, TaskCandidate, TaskSlot
from tests.factories import make_project, make_ranking_task, make_user

LABELERS = 32
TASKS = 40
OVERLAP = 3


def run_labelers(project, labelers, work):
    barrier = threading.Barrier(len(labelers))
    errors = []

    def run(user):
        try:
            barrier.wait()
            work(user)
        except Exception as exc:  # surfaced below: a thread's failure fails the test
            errors.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(u,)) for u in labelers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a labeler thread hung"
    assert errors == []


@pytest.fixture
def crowd(transactional_db):
    labelers = [make_user(f"labeler{i}") for i in range(LABELERS)]
    project = make_project("crowd", k=4, overlap=OVERLAP, demonstrations_enabled=False)
    Membership.objects.bulk_create(Membership(project=project, user=u, role=Role.LABELER) for u in labelers)
    for _ in range(TASKS):
        make_ranking_task(project)
    candidates = defaultdict(list)
    for task_id, candidate_id in TaskCandidate.objects.values_list("task_id", "candidate_id"):
        candidates[task_id].append(candidate_id)
    return project, labelers, candidates


def drain_queue(project, labelers, candidates):
    leases, accepted = [], []
    lock = threading.Lock()

    def work(user):
        while True:
            lease = services.next_task(user=user, project=project, kind="ranking")
            if lease is None:
                return
            entries = [{"candidate": c, "rank": i + 1} for i, c in enumerate(candidates[lease.task_id])]
            task = Task.objects.select_related("project").get(pk=lease.task_id)
            ranking, created = services.submit_ranking(labeler=user, task=task, entries=entries, seconds_spent=1)
            retry, retry_created = services.submit_ranking(labeler=user, task=task, entries=entries, seconds_spent=1)
            assert created and not retry_created and retry.pk == ranking.pk
            with lock:
                leases.append((lease.task_id, user.pk))
                accepted.append(ranking.pk)

    run_labelers(project, labelers, work)
    return leases, accepted


def assert_no_over_assignment(leases, accepted):
    per_task = Counter(task_id for task_id, _ in leases)
    assert max(per_task.values()) <= OVERLAP, "a task was leased to more labelers than its overlap"
    assert len(set(leases)) == len(leases), "a labeler got the same task twice"
    # Every slot filled exactly once, and every accepted submission is in the database.
    assert len(accepted) == TASKS * OVERLAP == Ranking.objects.count()
    assert set(accepted) == set(Ranking.objects.values_list("pk", flat=True))
    assert RankingEntry.objects.count() == 4 * TASKS * OVERLAP
    assert all(t.done_count == OVERLAP and t.status == "complete" for t in Task.objects.all())
    assert TaskSlot.objects.exclude(status="done").count() == 0
    assert Ranking.objects.values("task", "labeler").distinct().count() == Ranking.objects.count()


@pytest.mark.postgres
@pytest.mark.slow
def test_32_concurrent_labelers_on_postgres_never_over_assign(crowd, postgres_db):
    assert connection.vendor == "postgresql"
    assert_no_over_assignment(*drain_queue(*crowd))


@pytest.mark.slow
def test_32_concurrent_labelers_on_the_current_database_never_over_assign(crowd):
    assert_no_over_assignment(*drain_queue(*crowd))


@pytest.mark.slow
def test_concurrent_retries_of_one_submission_create_one_ranking(crowd):
    project, labelers, candidates = crowd
    alice = labelers[0]
    lease = services.next_task(user=alice, project=project, kind="ranking")
    entries = [{"candidate": c, "rank": i + 1} for i, c in enumerate(candidates[lease.task_id])]
    results = []

    def submit_same(_user):
        task = Task.objects.select_related("project").get(pk=lease.task_id)
        results.append(services.submit_ranking(labeler=alice, task=task, entries=entries, seconds_spent=2)[1])

    run_labelers(project, labelers[:12], submit_same)
    assert sorted(results) == [False] * 11 + [True]
    assert Ranking.objects.filter(labeler=alice).count() == 1


@pytest.mark.slow
def test_one_labelers_concurrent_next_task_requests_get_one_task(crowd):
    project, labelers, _ = crowd
    alice = labelers[0]
    got = []
    run_labelers(project, [alice] * 8, lambda user: got.append(
        services.next_task(user=user, project=project, kind="ranking").task_id))
    assert len(set(got)) == 1
    assert TaskSlot.objects.filter(labeler=alice).count() == 1
