"""Querysets built and compiled once, then run with new parameters, and inserts without the ORM's save path:
for the hottest statements only.

Django builds a queryset and compiles its SQL on every call. For the two access checks that every labeling
request makes (``access.access_project_by_id``, ``access.access_task_by_id``: one row each, a role subquery,
``select_related``) that was about 85 % of their CPU and about 40 % of the Python CPU of a served labeling
cycle, against 5 % for SQLite to run the statement (py-spy, docs/benchmarks.md, issue 13).

A ``PreparedQuery`` builds its queryset once per thread with sentinel values for its parameters, compiles it,
and remembers where each sentinel landed among the statement's parameters. A call runs the same SQL with the
real values and builds the instance exactly as the ORM's ``ModelIterable`` does: the backend's value
converters, the ``select_related`` objects and the annotations. Compiled per thread, as Django's connections
are, so a compiler is only ever used with its own thread's connection.

A ``PreparedInsert`` writes new rows of one model in one ``INSERT … VALUES … RETURNING id`` statement, its SQL
made once per row count. The values are Django's own, field by field (``pre_save``: defaults, ``auto_now``;
``get_db_prep_save``: JSON, datetimes), without ``Model.save``'s machinery, which was about a fifth of the
server's CPU in a ranking submission. It sends no ``pre_save``/``post_save`` signals, so it refuses a model
that has receivers for them. On PostgreSQL it runs on ``statement_cursor``, so the statement gets prepared.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from django.db import connections
from django.db.backends.utils import CursorDebugWrapper
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators
from django.db.models.signals import post_save, pre_save

PREPARE_AFTER = 2  # runs of a statement on a connection before psycopg prepares it (PostgreSQL)

_BIGINT = (-(2 ** 63), 2 ** 63 - 1)


class PreparedQuery:
    def __init__(self, build: Callable[..., QuerySet], *params: str):
        """``build(**params)`` returns the queryset; every parameter must be an integer (an id)."""
        self._build, self._params = build, params
        self._local = threading.local()

    def _compiled(self, using: str) -> _Compiled:
        cache = self._local.__dict__.setdefault("by_alias", {})
        if using not in cache:
            cache[using] = _Compiled(self._build, self._params, using)
        return cache[using]

    def get(self, using: str = "default", **values: Any) -> Model | None:
        """The one row the query finds with these ids, or None. An id that is not an integer in the
        database's range finds nothing, as the ORM's lookups do."""
        ids = {}
        for name in self._params:
            try:
                ids[name] = int(values[name])
            except (TypeError, ValueError):
                return None
            if not _BIGINT[0] <= ids[name] <= _BIGINT[1]:
                return None
        return self._compiled(using).get(ids)


class _Compiled:
    def __init__(self, build: Callable[..., QuerySet], names: tuple[str, ...], using: str):
        sentinels = {name: -(2 ** 62) + i for i, name in enumerate(names)}  # ids no row has
        queryset = build(**sentinels)
        self.compiler = queryset.query.get_compiler(using=using)
        self.sql, params = self.compiler.as_sql()
        self.params = list(params)
        self.slots = {name: [i for i, p in enumerate(self.params) if p == value] for name, value in sentinels.items()}
        missing = [name for name, slots in self.slots.items() if not slots]
        if missing:
            raise ValueError(f"the query does not use its parameter(s) {', '.join(missing)}")
        self.using = using
        select, klass_info = self.compiler.select, self.compiler.klass_info
        fields = klass_info["select_fields"]
        self.start, self.end = fields[0], fields[-1] + 1
        self.model = klass_info["model"]
        self.init_list = [column[0].target.attname for column in select[self.start:self.end]]
        self.populators = get_related_populators(klass_info, select, using)
        self.annotations = dict(self.compiler.annotation_col_map)

    def get(self, ids: dict[str, int]) -> Model | None:
        params = list(self.params)
        for name, slots in self.slots.items():
            for i in slots:
                params[i] = ids[name]
        with statement_cursor(self.using) as cursor:
            cursor.execute(self.sql, params)
            rows = cursor.fetchmany(2)
        if not rows:
            return None
        if len(rows) > 1:
            raise ValueError("a prepared query must find at most one row")
        row = next(iter(self.compiler.results_iter([rows])))
        obj = self.model.from_db(self.using, self.init_list, row[self.start:self.end])
        for populator in self.populators:
            populator.populate(row, obj)
        for name, position in self.annotations.items():
            setattr(obj, name, row[position])
        return obj


def statement_cursor(using: str = "default"):
    """A cursor for hand-written hot statements. On PostgreSQL one that binds parameters on the server, so
    that psycopg prepares a statement once it has run ``PREPARE_AFTER`` times on a connection: its plan is
    then made once per connection instead of on every call (planning the queue's claim costs about four times
    running it). Django's own cursors bind on the client and never prepare, so no other query changes.
    Django leaves preparing off for connection poolers that cannot keep prepared statements (PgBouncer in
    transaction mode); setting ``prepare_threshold`` in the database's OPTIONS (None: never) overrides this."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return connection.cursor()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None and "prepare_threshold" not in connection.settings_dict["OPTIONS"]:
        raw.prepare_threshold = PREPARE_AFTER
    cursor = psycopg.Cursor(raw)
    return _LoggedCursor(cursor, connection) if connection.queries_logged else connection.make_cursor(cursor)


class _LoggedCursor(CursorDebugWrapper):
    """When queries are logged (DEBUG, tests), log each statement with its parameters in, as Django's own
    cursors do; a server-binding cursor would otherwise show ``$1`` placeholders, or nothing once prepared."""

    def execute(self, sql, params=None):
        with self.debug_sql(self.db.ops.compose_sql(sql, params)):
            return self._execute_with_wrappers(sql, params, many=False, executor=self._execute)


class PreparedInsert:
    def __init__(self, model: type[Model]):
        """Inserts of ``model``: every concrete field but an auto primary key, as ``Model.save`` writes them."""
        meta = model._meta
        if meta.parents:
            raise ValueError(f"{model.__name__}: a model with parent tables is saved by the ORM")
        self.model = model
        self.fields = [f for f in meta.concrete_fields if not (f.primary_key and f.db_returning)]
        self.pk = meta.pk
        self._sql: dict[tuple[str, int], str] = {}

    def _statement(self, using: str, rows: int) -> str:
        key = (using, rows)
        if key not in self._sql:
            if pre_save.has_listeners(self.model) or post_save.has_listeners(self.model):
                raise ValueError(f"{self.model.__name__} has save signal receivers: save it with the ORM")
            ops = connections[using].ops
            one = "(" + ", ".join(["%s"] * len(self.fields)) + ")"
            self._sql[key] = (f"INSERT INTO {ops.quote_name(self.model._meta.db_table)} "
                              f"({', '.join(ops.quote_name(f.column) for f in self.fields)}) "
                              f"VALUES {', '.join([one] * rows)} RETURNING {ops.quote_name(self.pk.column)}")
        return self._sql[key]

    def insert(self, objs: Sequence[Model], using: str = "default") -> list[Model]:
        """Write ``objs`` (new instances, in one statement) and give each its primary key; returns them."""
        if not objs:
            return list(objs)
        connection = connections[using]
        params = []
        for obj in objs:
            for field in self.fields:
                value = field.get_db_prep_save(field.pre_save(obj, True), connection)
                if hasattr(value, "as_sql"):
                    raise ValueError(f"{field.name}: an expression is saved by the ORM")
                params.append(value)
        with statement_cursor(using) as cursor:
            cursor.execute(self._statement(using, len(objs)), params)
            ids = [row[0] for row in cursor.fetchall()]
        for obj, pk in zip(objs, ids, strict=True):
            setattr(obj, self.pk.attname, pk)
            obj._state.adding, obj._state.db = False, using
        return list(objs)
