"""A prepared query compiles its SQL once and returns what the ORM returns for the same queryset; a prepared
insert writes what the ORM's save writes."""
from __future__ import annotations

import threading

import pytest
from django.db import DataError, connection, connections, transaction
from django.db.models import Model, Value
from django.db.models.signals import post_save

from annotation import access
from annotation.models import LabelRevision, Ranking, RankingEntry, Role, Skip, Task, TaskSlot
from annotation.prepared import PreparedInsert, PreparedInsertTree, PreparedQuery
from tests.factories import make_ranking_task


def _fields(obj: Model) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


@pytest.fixture
def task(project_a):
    return make_ranking_task(project_a)


def test_a_task_with_its_role_is_the_same_as_the_orm_gives(users, task):
    labeler = users["alice"]
    Task.objects.filter(pk=task.pk).update(gold_ranks={"1": 2})  # a JSON column: converted as the ORM does
    orm = (access._with_role(Task.objects.select_related("project", "prompt"), labeler, "project_id")
           .filter(pk=task.pk).first())
    prepared = access._TASK_WITH_ROLE.get(user=labeler.pk, task=task.pk)
    assert _fields(prepared) == _fields(orm)
    assert prepared.user_role == orm.user_role == Role.LABELER
    # select_related: the project and prompt come with it, converted as the ORM converts them
    assert Task.project.is_cached(prepared) and Task.prompt.is_cached(prepared)
    assert _fields(prepared.project) == _fields(orm.project)
    assert _fields(prepared.prompt) == _fields(orm.prompt)
    assert prepared.created == orm.created and prepared.created.tzinfo is not None
    assert prepared.gold_ranks == orm.gold_ranks == {"1": 2}
    assert not prepared._state.adding and prepared._state.db == "default"


def test_someone_outside_the_project_gets_the_task_without_a_role(users, task):
    outsider = users["olga"]
    assert access._TASK_WITH_ROLE.get(user=outsider.pk, task=task.pk).user_role is None


@pytest.mark.parametrize("bad", [None, "abc", "1.5", 2 ** 63, -(2 ** 63) - 1, 10 ** 30])
def test_an_id_that_is_not_an_integer_in_range_finds_nothing(users, task, bad):
    assert access._TASK_WITH_ROLE.get(user=users["alice"].pk, task=bad) is None


def test_a_missing_row_is_none(users, task):
    assert access._PROJECT_WITH_ROLE.get(user=users["alice"].pk, project=task.project_id + 1000) is None


def test_the_queryset_is_built_once_per_thread_and_each_call_is_one_statement(
        users, task, django_assert_num_queries):
    builds = []

    def build(user, task):
        builds.append(1)
        return access._with_role(Task.objects.select_related("project"), user, "project_id").filter(pk=task)

    query = PreparedQuery(build, "user", "task")
    for _ in range(3):
        with django_assert_num_queries(1):
            assert query.get(user=users["alice"].pk, task=task.pk).pk == task.pk
    assert len(builds) == 1

    found = []

    def other_thread():
        try:
            found.append(query.get(user=users["alice"].pk, task=task.pk))
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert len(builds) == 2  # compiled again with that thread's own connection


def test_a_query_that_ignores_a_parameter_is_refused(users, task):
    query = PreparedQuery(lambda user, task: Task.objects.filter(pk=task), "user", "task")
    with pytest.raises(ValueError, match="user"):
        query.get(user=1, task=task.pk)


def _ranking_rows(task, labeler, **values):
    slot = task.slots.first()
    ranking = Ranking(task=task, slot=slot, labeler=labeler, comment="tie: 2 = 3", seconds_spent=4.5,
                      shown_order=[3, 1, 2], **values)
    candidates = list(task.task_candidates.values_list("candidate_id", flat=True))
    entries = [RankingEntry(candidate_id=c, rank=i + 1, quality=7 if i == 0 else None, harmful=i == 1)
               for i, c in enumerate(candidates)]
    return ranking, entries


def test_an_insert_writes_what_the_orms_save_writes(users, project_a):
    labeler = users["alice"]
    orm_task, prepared_task = make_ranking_task(project_a), make_ranking_task(project_a)
    orm, orm_entries = _ranking_rows(orm_task, labeler)
    orm.save()
    for e in orm_entries:
        e.ranking = orm
    RankingEntry.objects.bulk_create(orm_entries)

    prepared, prepared_entries = _ranking_rows(prepared_task, labeler)
    [returned] = PreparedInsert(Ranking).insert([prepared])
    assert returned is prepared and prepared.pk is not None
    assert not prepared._state.adding and prepared._state.db == "default"
    for e in prepared_entries:
        e.ranking = prepared
    PreparedInsert(RankingEntry).insert(prepared_entries)

    ignore = {"id", "task_id", "slot_id", "created", "updated"}
    stored_orm, stored = Ranking.objects.get(pk=orm.pk), Ranking.objects.get(pk=prepared.pk)
    assert {k: v for k, v in _fields(stored).items() if k not in ignore} == \
        {k: v for k, v in _fields(stored_orm).items() if k not in ignore}
    assert stored.shown_order == [3, 1, 2] and stored.review_status == stored_orm.review_status  # JSON, defaults
    assert stored.created == prepared.created and stored.created.tzinfo is not None  # auto_now_add, in memory too
    assert stored.updated == prepared.updated
    # every entry got its own id, in order, and the stored rows match the ORM's
    assert [e.pk for e in prepared_entries] == list(stored.entries.order_by("id").values_list("id", flat=True))
    columns = ("rank", "quality", "fails_instruction", "hallucination", "inappropriate", "harmful")
    assert list(stored.entries.order_by("id").values_list(*columns)) == \
        list(stored_orm.entries.order_by("id").values_list(*columns))


def test_an_insert_of_several_rows_is_one_statement(users, project_a, django_assert_num_queries):
    task = make_ranking_task(project_a)
    ranking, entries = _ranking_rows(task, users["alice"])
    ranking.save()
    for e in entries:
        e.ranking = ranking
    with django_assert_num_queries(1):
        PreparedInsert(RankingEntry).insert(entries)
    assert ranking.entries.count() == len(entries) == project_a.k


def test_an_insert_refuses_a_model_with_save_signal_receivers_and_expressions(users, project_a):
    task = make_ranking_task(project_a)

    def receiver(**kwargs):
        pass

    post_save.connect(receiver, sender=Skip)
    try:
        with pytest.raises(ValueError, match="signal"):
            PreparedInsert(Skip).insert([Skip(task=task, labeler=users["alice"], reason="unclear")])
    finally:
        post_save.disconnect(receiver, sender=Skip)
    ranking, _ = _ranking_rows(task, users["alice"])
    ranking.seconds_spent = Value(1.0)
    with pytest.raises(ValueError, match="expression"):
        PreparedInsert(Ranking).insert([ranking])
    assert not Skip.objects.exists() and not Ranking.objects.filter(task=task).exists()


_TREE = PreparedInsertTree(Ranking, (RankingEntry, "ranking"), (LabelRevision, "ranking"))


def test_a_row_and_its_children_are_written_as_the_orm_writes_them(users, project_a, django_assert_num_queries):
    """One statement on PostgreSQL (data-modifying CTEs), one per table elsewhere; every row gets its id, the
    children in list order, and points at the new parent."""
    labeler = users["alice"]
    ranking, entries = _ranking_rows(make_ranking_task(project_a), labeler)
    revision = LabelRevision(ranking=ranking, number=1, content={"comment": "x", "entries": [1, 2]}, author=labeler,
                             seconds_spent=2.5)
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 3):
        _TREE.insert(ranking, entries, [revision])
    stored = Ranking.objects.get(pk=ranking.pk)
    assert stored.shown_order == [3, 1, 2] and stored.created == ranking.created and stored.comment == ranking.comment
    assert [e.pk for e in entries] == list(stored.entries.order_by("id").values_list("id", flat=True))
    assert all(e.ranking_id == ranking.pk and not e._state.adding for e in entries)
    columns = ("candidate_id", "rank", "quality", "harmful")
    assert list(stored.entries.order_by("id").values_list(*columns)) == [
        (e.candidate_id, e.rank, e.quality, e.harmful) for e in entries]
    assert entries[0].quality == 7 and entries[1].quality is None and entries[1].harmful  # NULL and bool, typed
    [stored_revision] = stored.revisions.all()
    assert stored_revision.pk == revision.pk and stored_revision.content == {"comment": "x", "entries": [1, 2]}
    assert stored_revision.seconds_spent == 2.5 and stored_revision.author_id == labeler.pk


def test_a_row_without_children_of_a_kind_is_written_alone(users, project_a):
    ranking, _ = _ranking_rows(make_ranking_task(project_a), users["alice"])
    _TREE.insert(ranking, [], [])
    assert Ranking.objects.filter(pk=ranking.pk).exists() and not RankingEntry.objects.filter(ranking=ranking).exists()


@pytest.mark.postgres
def test_further_writes_run_in_the_same_statement_on_postgresql(users, project_a, django_assert_num_queries):
    task = make_ranking_task(project_a)
    ranking, entries = _ranking_rows(task, users["alice"])
    also = ("touched AS (UPDATE annotation_task SET done_count = 1 WHERE id = %(task)s RETURNING id)", {"task": task.pk})
    with django_assert_num_queries(1):
        _TREE.insert(ranking, entries, [], also=also)
    task.refresh_from_db()
    assert task.done_count == 1 and ranking.entries.count() == len(entries)


def test_further_writes_are_refused_where_they_cannot_be_folded_in(users, project_a):
    if connection.vendor == "postgresql":
        pytest.skip("PostgreSQL folds them in")
    ranking, entries = _ranking_rows(make_ranking_task(project_a), users["alice"])
    with pytest.raises(ValueError, match="PostgreSQL only"):
        _TREE.insert(ranking, entries, [], also=("x AS (SELECT 1)", {}))
    assert not Ranking.objects.filter(task=ranking.task).exists()


@pytest.mark.postgres
def test_a_childs_too_long_text_is_refused_not_truncated(users, project_a):
    """The children's values are cast to their column's type without its length: a value too long for a
    ``varchar(n)`` column fails as a plain INSERT fails, rather than being cut to fit by the cast."""
    task = make_ranking_task(project_a)
    tree = PreparedInsertTree(Task, (Skip, "task"))
    parent = Task(project=project_a, kind=task.kind, prompt=task.prompt)
    with pytest.raises(DataError), transaction.atomic():
        tree.insert(parent, [Skip(labeler=users["alice"], reason="x" * 501)])
    assert not Skip.objects.exists()
    parent = Task(project=project_a, kind=task.kind, prompt=task.prompt)
    tree.insert(parent, [Skip(labeler=users["alice"], reason="x" * 500)])
    assert Skip.objects.get(task=parent).reason == "x" * 500


def test_a_child_model_must_point_at_the_parent(users):
    with pytest.raises(ValueError, match="does not point at"):
        PreparedInsertTree(Ranking, (TaskSlot, "task"))
