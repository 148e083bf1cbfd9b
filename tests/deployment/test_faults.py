"""Faults under real processes (gunicorn as production starts it, PostgreSQL of the tests' own):

- a gunicorn worker killed with SIGKILL while submits are in the middle of their transaction leaves no
  partial row, and the clients' retries of the interrupted requests then complete once;
- a PostgreSQL restart under load: the web server reconnects by itself (CONN_HEALTH_CHECKS) and no
  acknowledged submission is lost.

(A Redis restart is in test_lost_messages.py.) The figures are in docs/reliability.md.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from bench.harness import CycleBudget, Labeler, integrity_checks, latency_summary, seed, status_counts, submission

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g} s for {what}")
        time.sleep(0.05)


def by_hand(seeded: dict, port: int, **client) -> list[Labeler]:
    """Labelers driven call by call by the test (never started as threads)."""
    return [Labeler(i, token, port, seeded["project"], threading.Event(), [0.0], CycleBudget(None), **client)
            for i, token in enumerate(seeded["tokens"])]


def scalar(db, sql: str, *args):
    return db.execute(sql, args).fetchone()[0]


# --- kill -9 of a gunicorn worker ------------------------------------------------------------------

IN_FLIGHT = 8


def test_a_worker_killed_in_the_middle_of_submits_leaves_no_partial_rows_and_the_retries_complete_once(
        own_postgres, start_gunicorn):
    seeded = seed(own_postgres.env, "kill", IN_FLIGHT, IN_FLIGHT, 1)
    server = start_gunicorn(workers=1, threads=IN_FLIGHT)  # one worker: every request in flight is in it
    labelers = by_hand(seeded, server.port, timeout=60, attempts=1)  # a retry is the test's to send
    sends = []
    for lab in labelers:
        status, data = lab.client.post(f"/api/projects/{lab.project}/next-task/", {"kind": "ranking"}, lab.next_calls)
        assert status == 200
        task = json.loads(data)
        lab.handed.append(task["id"])
        sends.append(submission(lab.idx, task))
    users = seeded["users"]
    [worker] = server.workers()

    with own_postgres.pg.connect() as watcher:
        with own_postgres.pg.connect() as locker, locker.transaction():
            # Inserting a ranking's first revision now waits for this lock: every submit stops inside its
            # transaction, after its ranking and entries rows and before its commit.
            locker.execute("LOCK TABLE annotation_labelrevision IN SHARE MODE")
            answers: list[object] = [None] * IN_FLIGHT

            def submit(i: int) -> None:
                answers[i] = labelers[i].client.post(*sends[i], labelers[i].submit_calls)[0]

            threads = [threading.Thread(target=submit, args=(i,)) for i in range(IN_FLIGHT)]
            for t in threads:
                t.start()
            wait_until(lambda: scalar(watcher, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                               "AND datname = current_database()") == IN_FLIGHT, 60,
                       "every submit to wait inside its transaction")
            # …each holding its uncommitted ranking (and entries): what a partial row would be made of.
            assert scalar(watcher, "SELECT count(DISTINCT pid) FROM pg_locks WHERE granted AND mode = "
                                   "'RowExclusiveLock' AND relation = 'annotation_rankingentry'::regclass") == IN_FLIGHT
            os.kill(worker, signal.SIGKILL)
            for t in threads:
                t.join(timeout=30)
        # The lock is gone; the dead worker's database sessions find their client gone and roll back.
        wait_until(lambda: scalar(watcher, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                           "AND backend_type = 'client backend' AND pid <> pg_backend_pid()") == 0,
                   60, "the killed worker's sessions to end")
        assert all(isinstance(a, str) and a.startswith("conn:") for a in answers), answers  # no answer came
        wait_until(lambda: server.workers() not in ([], [worker]), 30, "the master to start a new worker")
        # No partial rows: nothing of the interrupted submissions was kept, and every slot is still leased.
        assert scalar(watcher, "SELECT count(*) FROM annotation_ranking WHERE labeler_id = ANY(%s)", users) == 0
        assert scalar(watcher, "SELECT count(*) FROM annotation_rankingentry e JOIN annotation_ranking r "
                               "ON r.id = e.ranking_id WHERE r.labeler_id = ANY(%s)", users) == 0
        assert scalar(watcher, "SELECT count(*) FROM annotation_labelrevision WHERE author_id = ANY(%s)", users) == 0
        assert scalar(watcher, "SELECT count(*) FROM annotation_taskslot WHERE project_id = %s AND status = 'leased' "
                               "AND labeler_id IS NOT NULL", seeded["project"]) == IN_FLIGHT
        assert scalar(watcher, "SELECT sum(done_count) FROM annotation_task WHERE project_id = %s",
                      seeded["project"]) == 0

        # Each client resends its interrupted request: it completes once; a second resend is the same label.
        for lab, send in zip(labelers, sends, strict=True):
            status, data = lab.client.post(*send, lab.submit_calls)
            assert status == 201, data
            first = json.loads(data)
            status, data = lab.client.post(*send, lab.submit_calls)
            assert status == 200 and json.loads(data)["id"] == first["id"], data
            assert json.loads(data)["entries"] == first["entries"]
            lab.submitted.append((first["id"], first["task"], 201))
        checks = integrity_checks(watcher, seeded["project"], labelers, dict(zip(seeded["tokens"], users, strict=True)))
    print("kill -9:", json.dumps({"interrupted": answers, "resends": status_counts(
        [c for lab in labelers for c in lab.submit_calls if isinstance(c[2], int)])}))
    assert checks["ok"] and checks["rankings_in_db"] == IN_FLIGHT, checks


# --- PostgreSQL restart under load ---------------------------------------------------------------------

RESTART_LABELERS = 16
DOWN_SECONDS = 2.0  # how long PostgreSQL stays stopped: every request meanwhile fails and is sent again
SERVER_ERRORS = (500, 502, 503, 504)


def test_the_service_reconnects_by_itself_after_a_postgres_restart_under_load_and_loses_nothing_acknowledged(
        own_postgres, start_gunicorn):
    seeded = seed(own_postgres.env, "restart", 600, RESTART_LABELERS, 2)
    server = start_gunicorn(workers=2, threads=4)
    stop, deadline = threading.Event(), [float("inf")]
    # While the database is down the server answers 503 with Retry-After; a labeler sends the same request again.
    labelers = [Labeler(i, token, server.port, seeded["project"], stop, deadline, CycleBudget(None), timeout=15,
                        attempts=40, retry_statuses=SERVER_ERRORS) for i, token in enumerate(seeded["tokens"])]
    started = time.perf_counter()
    for lab in labelers:
        lab.start()
    wait_until(lambda: all(lab.cycles for lab in labelers), 60, "every labeler to complete a cycle")
    restarting = time.perf_counter()
    own_postgres.pg.restart(down_seconds=DOWN_SECONDS)
    back = time.perf_counter()
    wait_until(lambda: all(lab.cycles[-1][0] > back for lab in labelers), 60,
               "every labeler to complete a cycle begun after the restart")
    stop.set()
    for lab in labelers:
        lab.join(timeout=60)
    calls = [c for lab in labelers for c in lab.next_calls + lab.submit_calls]
    figures = {
        "labelers": RESTART_LABELERS, "stopped_for_s": round(back - restarting, 2),
        "cycles_before": sum(end < restarting for lab in labelers for _, end in lab.cycles),
        "cycles_after": sum(start > back for lab in labelers for start, _ in lab.cycles),
        "first_answer_after_restart_s": round(min(t + d for t, d, s in calls if s in (200, 201) and t + d > back)
                                              - back, 2),
        "failed_attempts_during_restart": status_counts([c for c in calls if c[2] not in (200, 201)]),
        "latency_after_restart": latency_summary(calls, back),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print("postgres restart:", json.dumps(figures))

    assert not [lab.name for lab in labelers if lab.is_alive()] and [lab.error for lab in labelers if lab.error] == []
    assert server.proc.poll() is None  # the same server, never restarted
    # From the moment PostgreSQL accepts connections again, no request fails: a stale connection is checked
    # and replaced before its request uses it.
    after = [s for t, _, s in calls if t > back and (isinstance(s, str) or s >= 500)]
    assert after == [], server.tail()
    # During it, an unreachable database is "unavailable, retry" (503), never a server error (500).
    assert {s for _, _, s in calls if isinstance(s, int) and s >= 500} <= {503}, figures
    with own_postgres.pg.connect() as db:
        checks = integrity_checks(db, seeded["project"], labelers,
                                  dict(zip(seeded["tokens"], seeded["users"], strict=True)))
    assert checks["ok"], checks
