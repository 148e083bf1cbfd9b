"""The claim's cost does not grow with the queue (issue 13): next-task reads the first rows of one partial index
scoped to the project and kind (``slot_queue``), whatever the number of open tasks there or in other projects.

The plans are the database's own (EXPLAIN) for the very statements ``services.next_task`` runs, captured with
their parameters and rolled back."""
from __future__ import annotations

import re

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from annotation import services
from annotation.models import Role, Task, TaskSlot
from tests.factories import bulk_ranking_tasks, make_project

BIG_TABLES = ("annotation_taskslot", "annotation_task", "annotation_prompt", "annotation_candidate",
              "annotation_taskcandidate")


def claim_statements(user, project) -> list[str]:
    """What next_task sends, with its parameters, rolled back."""
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        lease = services.next_task(user=user, project=project, kind="ranking")
        transaction.set_rollback(True)
    assert lease is not None
    return [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]


def plan_of(sql: str) -> list[str]:
    """The plan, one line per node: EXPLAIN on PostgreSQL (an UPDATE is planned, not run), EXPLAIN QUERY PLAN
    on SQLite."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("EXPLAIN (COSTS OFF) " + sql)
            return [row[0] for row in cursor.fetchall()]
        cursor.execute("EXPLAIN QUERY PLAN " + sql)
        return [f"{node} {parent} {detail}" for node, parent, _, detail in cursor.fetchall()]


def claim_plan(user, project) -> list[str]:
    claim = [sql for sql in claim_statements(user, project) if "UPDATE annotation_taskslot" in sql]
    assert len(claim) == 1
    return plan_of(claim[0])


def shape(plan: list[str]) -> list[str]:
    """The plan without its constants (ids, times), which differ from one project to the other."""
    return [re.sub(r"\b\d+\b", "N", re.sub(r"'[^']*'", "'…'", line)) for line in plan]


def analyze() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


@pytest.fixture
def queues(users):
    """alice labels a small project (100 open tasks) and a large one (10,000); a third project, not hers,
    holds 5,000 more."""
    alice = users["alice"]
    small = make_project("small queue", k=2, members={alice: Role.LABELER})
    large = make_project("large queue", k=2, members={alice: Role.LABELER})
    elsewhere = make_project("someone else's queue", k=2)
    bulk_ranking_tasks(small, 100)
    bulk_ranking_tasks(large, 10_000)
    bulk_ranking_tasks(elsewhere, 5_000)
    analyze()
    return alice, small, large


def assert_reads_the_queue_index(plan: list[str]) -> None:
    text = "\n".join(plan)
    if connection.vendor == "postgresql":
        assert "Index Scan using slot_queue on annotation_taskslot" in text, text
        for table in BIG_TABLES:
            assert not re.search(rf"Seq Scan on {table}\b", text), text
        assert not re.search(r"Sort Key: .*task_done_count", text), text  # read in the index's order, not sorted
    else:
        rows = [line.split(" ", 2) for line in plan]
        reads = [parent for _, parent, detail in rows
                 if detail == "SEARCH s USING INDEX slot_queue (project_id=? AND kind=? AND task_is_gold=?)"]
        assert reads, text
        assert not [detail for _, _, detail in rows if re.match(r"SCAN (s|t|m|k|annotation_\w+)\b", detail)], text
        # Read in the index's order: no sort beside that read.
        assert not [1 for _, parent, detail in rows if parent in reads and detail.startswith("USE TEMP B-TREE")], text


def gold_turn_key(user, project) -> str:
    """A SECRET_KEY under which the user's first draw in the project is a gold turn."""
    for i in range(1000):
        key = f"key {i}"
        with override_settings(SECRET_KEY=key):
            if services.gold_turn(user=user, project=project, served=0):
                return key
    raise AssertionError("no key gives a gold turn")


def test_the_claim_reads_the_queue_index_and_scans_no_table_on_ordinary_and_gold_turns(queues, settings):
    alice, _, large = queues
    assert_reads_the_queue_index(claim_plan(alice, large))
    large.gold_rate = 0.5
    large.save()
    settings.SECRET_KEY = gold_turn_key(alice, large)
    claim = [sql for sql in claim_statements(alice, large) if "UPDATE annotation_taskslot" in sql]
    assert len(claim) == 1 and "task_is_gold = TRUE" in claim[0]  # the gold turn's statement
    assert_reads_the_queue_index(plan_of(claim[0]))


def test_the_claim_runs_the_same_statements_and_plan_for_100_or_10000_open_tasks(queues):
    alice, small, large = queues
    small_statements, large_statements = claim_statements(alice, small), claim_statements(alice, large)
    assert [shape([sql]) for sql in small_statements] == [shape([sql]) for sql in large_statements]
    assert shape(claim_plan(alice, small)) == shape(claim_plan(alice, large))


def test_finished_work_stays_out_of_the_queue_index(users):
    """Done slots, and free slots of closed tasks, are not in ``slot_queue``: the claim never reads them."""
    alice, carol = users["alice"], users["carol"]
    project = make_project("mostly done", k=2, members={alice: Role.LABELER, carol: Role.LABELER})
    bulk_ranking_tasks(project, 50)
    for _ in range(40):
        lease = services.next_task(user=carol, project=project, kind="ranking")
        task = project.tasks.get(pk=lease.task_id)
        entries = [{"candidate": c, "rank": i + 1} for i, c in enumerate(services.shown_order(task))]
        services.submit_ranking(labeler=carol, task=task, entries=entries, seconds_spent=1)
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM annotation_taskslot WHERE project_id = %s AND status = 'free' "
                       "AND task_open", [project.pk])
        assert cursor.fetchone()[0] == 10  # what the partial index holds of the project: its open work


@pytest.fixture(params=["large", "mostly done", "never analyzed"])
def queue_with_statistics(request, users):
    """alice's queue as the planner sees it: 10,000 open tasks beside 5,000 of another project; 400 tasks of
    which 300 are done; or 400 open tasks in tables the planner never analyzed (a fresh database)."""
    if request.param == "large":
        alice, _, large = request.getfixturevalue("queues")
        return alice, large
    alice = users["alice"]
    project = make_project("prepared queue", k=2, members={alice: Role.LABELER})
    bulk_ranking_tasks(project, 400)
    if request.param == "mostly done":
        done = list(project.tasks.order_by("id").values_list("id", flat=True)[:300])
        TaskSlot.objects.filter(task_id__in=done).update(status=TaskSlot.Status.DONE, labeler=users["carol"])
        Task.objects.filter(id__in=done).update(done_count=1, status=Task.Status.COMPLETE)
        analyze()
    return alice, project


@pytest.mark.postgres
def test_the_prepared_claims_generic_plan_reads_the_queue_index_too(queue_with_statistics, postgres_db):
    """Once prepared, PostgreSQL may run the claim with a generic plan, made without the parameters' values
    (which project, which labeler): that plan must walk the queue index too."""
    alice, large = queue_with_statistics
    for _ in range(6):  # prepared after two runs; generic plans are considered after five
        lease = services.next_task(user=alice, project=large, kind="ranking")
        services.release_task(labeler=alice, task=large.tasks.get(pk=lease.task_id))
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, parameter_types::text[] FROM pg_prepared_statements "
                       "WHERE statement LIKE 'WITH pick AS%%'")
        statement, types = cursor.fetchone()
        cursor.execute(f"PREPARE generic_claim ({', '.join(types)}) AS {statement}")
        values = {"smallint": "1", "integer": "1", "bigint": "1", "text": "'ranking'",
                  "timestamp with time zone": "now()"}
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"EXPLAIN (COSTS OFF) EXECUTE generic_claim({', '.join(values[t] for t in types)})")
        plan = [row[0] for row in cursor.fetchall()]
        cursor.execute("DEALLOCATE generic_claim")
    assert_reads_the_queue_index(plan)


@pytest.mark.postgres
def test_the_claim_is_planned_once_per_connection_on_postgres(project_a, users, postgres_db):
    """Planning the claim costs several times running it: psycopg prepares the queue's statements once they
    ran a couple of times on a connection, and the server then reuses their plans."""
    bulk_ranking_tasks(project_a, 10)
    for name in ("alice", "carol", "alice"):
        assert services.next_task(user=users[name], project=project_a, kind="ranking") is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE NOT from_sql")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any(sql.startswith("WITH pick AS") for sql in prepared), prepared
    assert any("FOR NO KEY UPDATE" in sql for sql in prepared), prepared
