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

import itertools
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from django.db import connections
from django.db.backends.utils import CursorDebugWrapper
from django.db.models import Field, Model, QuerySet
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

    def values(self, obj: Model, connection, fields: Sequence[Field] | None = None) -> list:
        """The values ``Model.save`` would write for ``obj``'s ``fields`` (default: all but the primary key)."""
        params = []
        for field in self.fields if fields is None else fields:
            value = field.get_db_prep_save(field.pre_save(obj, True), connection)
            if hasattr(value, "as_sql"):
                raise ValueError(f"{field.name}: an expression is saved by the ORM")
            params.append(value)
        return params

    def insert(self, objs: Sequence[Model], using: str = "default") -> list[Model]:
        """Write ``objs`` (new instances, in one statement) and give each its primary key; returns them."""
        if not objs:
            return list(objs)
        connection = connections[using]
        params = [value for obj in objs for value in self.values(obj, connection)]
        with statement_cursor(using) as cursor:
            cursor.execute(self._statement(using, len(objs)), params)
            ids = [row[0] for row in cursor.fetchall()]
        self.saved(objs, ids, using)
        return list(objs)

    def saved(self, objs: Sequence[Model], ids: Sequence[int], using: str) -> None:
        for obj, pk in zip(objs, ids, strict=True):
            setattr(obj, self.pk.attname, pk)
            obj._state.adding, obj._state.db = False, using


class PreparedInsertTree:
    """A new row and its new child rows (each child model pointing at it by one foreign key), and on PostgreSQL
    any further writes of the same transaction, in **one** statement: data-modifying CTEs, ``WITH p AS (INSERT
    … RETURNING id), c0 AS (INSERT … SELECT p.id, … FROM p, (VALUES …)) …``. Each statement saved is a round
    trip to the server, where a busy machine may also switch threads (issue 13: a ranking's submission went from
    six statements to three). Elsewhere (SQLite has no data-modifying CTEs) one ``PreparedInsert`` per model.

    The children's values sit in a ``VALUES`` list, where PostgreSQL cannot infer a parameter's type from its
    column: each is cast to its column's type, without a length (the column's own check then applies, as a
    plain INSERT's would, where a cast to ``varchar(n)`` would truncate). Children are inserted in list order,
    so their ids, ascending, are theirs in that order."""

    def __init__(self, parent: type[Model], *children: tuple[type[Model], str]):
        """``children``: (model, name of its foreign key to ``parent``) for each kind of child row."""
        self.parent = PreparedInsert(parent)
        self.children = []
        for model, fk_name in children:
            fk = model._meta.get_field(fk_name)
            if fk.related_model is not parent:
                raise ValueError(f"{model.__name__}.{fk_name} does not point at {parent.__name__}")
            insert = PreparedInsert(model)
            self.children.append((insert, fk, [f for f in insert.fields if f is not fk]))
        self._sql: dict[tuple, str] = {}

    def insert(self, parent: Model, *children: Sequence[Model], also: tuple[str, dict] | None = None,
               using: str = "default") -> None:
        """Write ``parent``, then each list of ``children`` (one per kind given at construction) pointing at it;
        gives every row its primary key and the children their foreign key. ``also``: (further CTEs, their
        named parameters), data-modifying statements of the same transaction that need none of these rows,
        run in the same statement; PostgreSQL only (``None`` elsewhere: the caller runs them itself)."""
        if len(children) != len(self.children):
            raise ValueError(f"{len(self.children)} lists of children expected, got {len(children)}")
        connection = connections[using]
        if connection.vendor != "postgresql":
            if also is not None:
                raise ValueError("further statements are folded in on PostgreSQL only")
            self.parent.insert([parent], using)
            for (insert, fk, _), objs in zip(self.children, children):
                for obj in objs:
                    setattr(obj, fk.attname, parent.pk)
                insert.insert(objs, using)
            return
        extra_sql, params = also if also is not None else ("", {})
        params = dict(params)
        values = self.parent.values(parent, connection)
        for (insert, _, fields), objs in zip(self.children, children):
            values += [value for obj in objs for value in insert.values(obj, connection, fields)]
        for i, value in enumerate(values):
            if f"p{i}" in params:
                raise ValueError(f"p{i}: the tree's own parameter names are p0, p1, …")
            params[f"p{i}"] = value
        key = (using, tuple(len(objs) for objs in children), extra_sql)
        if key not in self._sql:
            self._sql[key] = self._statement(connection, [len(objs) for objs in children], extra_sql)
        with statement_cursor(using) as cursor:
            cursor.execute(self._sql[key], params)
            parent_id, *child_ids = cursor.fetchone()
        self.parent.saved([parent], [parent_id], using)
        for (insert, fk, _), objs, ids in zip(self.children, children, child_ids):
            for obj in objs:
                setattr(obj, fk.attname, parent_id)
            insert.saved(objs, sorted(ids), using)

    def _statement(self, connection, counts: list[int], extra_sql: str) -> str:
        quote = connection.ops.quote_name
        names = iter(f"%(p{i})s" for i in itertools.count())
        parent_fields = self.parent.fields
        ctes = [f"p AS (INSERT INTO {quote(self.parent.model._meta.db_table)} "
                f"({', '.join(quote(f.column) for f in parent_fields)}) "
                f"VALUES ({', '.join(next(names) for _ in parent_fields)}) RETURNING {quote(self.parent.pk.column)})"]
        selects = [f"(SELECT {quote(self.parent.pk.column)} FROM p)"]
        for n, ((insert, fk, fields), count) in enumerate(zip(self.children, counts)):
            casts = [re.sub(r"\(.*?\)", "", f.cast_db_type(connection)) for f in fields]
            rows = ", ".join("(" + ", ".join([str(row)] + [f"CAST({next(names)} AS {cast})" for cast in casts]) + ")"
                             for row in range(count))
            columns = ", ".join(f"v.c{i}" for i in range(len(fields)))
            pk = quote(insert.pk.column)
            if count:
                ctes.append(
                    f"c{n} AS (INSERT INTO {quote(insert.model._meta.db_table)} "
                    f"({', '.join(quote(f.column) for f in [fk, *fields])}) "
                    f"SELECT p.{quote(self.parent.pk.column)}, {columns} FROM p, (VALUES {rows}) "
                    f"AS v(o, {', '.join(f'c{i}' for i in range(len(fields)))}) ORDER BY v.o RETURNING {pk})")
                selects.append(f"ARRAY(SELECT {pk} FROM c{n})")
            else:
                selects.append("ARRAY[]::bigint[]")
        if extra_sql:
            ctes.append(extra_sql)
        return f"WITH {', '.join(ctes)} SELECT {', '.join(selects)}"
