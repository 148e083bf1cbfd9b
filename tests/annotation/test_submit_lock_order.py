"""Two labelers submitting on one task never deadlock, even when one of them leased their slot while the
other's submission was waiting for the task row (found by tests/deployment/test_load.py: 64 labelers,
overlap 3, about one submission in 1500 answered 500 "deadlock detected").

The interleaving, made deterministic: a third session holds the task row (as a concurrent submission on
the task's third slot would), alice's submission queues for it, bob leases the last free slot and submits,
and the third session lets go. Alice's finishing statement took its snapshot while bob's slot was still
free, so it must not wait for bob's slot while it holds the task row bob is waiting for.
"""
from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import connection, connections

from annotation import services
from annotation.models import Membership, Ranking, Role, Task
from tests.factories import best_first, make_project, make_ranking_task, make_user

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def waiting_on_locks(db) -> int:
    return db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                      "AND datname = current_database()").fetchone()[0]


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"waited 30 s for {what}"
        time.sleep(0.02)


def test_a_submission_waiting_for_its_task_does_not_deadlock_with_one_on_a_slot_leased_meanwhile(
        transactional_db, postgres_db):
    alice, bob = make_user("alice"), make_user("bob")
    project = make_project("two slots", k=4, overlap=2, demonstrations_enabled=False)
    Membership.objects.bulk_create(Membership(project=project, user=u, role=Role.LABELER) for u in (alice, bob))
    task = make_ranking_task(project)
    assert services.next_task(user=alice, project=project, kind="ranking").task_id == task.pk
    entries = best_first(task)
    outcomes: dict[str, object] = {}

    def submit(name: str, user) -> None:
        try:
            outcomes[name] = services.submit_ranking(labeler=user, task=Task.objects.get(pk=task.pk),
                                                     entries=entries, seconds_spent=1)[1]
        except Exception as exc:  # reported by the assertion below
            outcomes[name] = repr(exc)
        finally:
            connections.close_all()

    params = connection.get_connection_params()
    with psycopg.connect(**params, autocommit=True) as watcher, psycopg.connect(**params) as holder:
        holder.execute("SELECT id FROM annotation_task WHERE id = %s FOR NO KEY UPDATE", [task.pk])
        first = threading.Thread(target=submit, args=("alice", alice))
        first.start()
        wait_for(lambda: waiting_on_locks(watcher) == 1, "alice's submission to wait for the task row")
        assert services.next_task(user=bob, project=project, kind="ranking").task_id == task.pk
        second = threading.Thread(target=submit, args=("bob", bob))
        second.start()
        wait_for(lambda: waiting_on_locks(watcher) == 2, "bob's submission to wait for the task row")
        holder.commit()
        first.join(timeout=60)
        second.join(timeout=60)
    assert outcomes == {"alice": True, "bob": True}
    task.refresh_from_db()
    assert task.done_count == 2 and task.status == "complete" and Ranking.objects.filter(task=task).count() == 2
