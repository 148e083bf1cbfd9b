"""Querysets built and compiled once, then run with new parameters: for the hottest lookups only.

Django builds a queryset and compiles its SQL on every call. For the two access checks that every labeling
request makes (``access.access_project_by_id``, ``access.access_task_by_id``: one row each, a role subquery,
``select_related``) that was about 85 % of their CPU and about 40 % of the Python CPU of a served labeling
cycle, against 5 % for SQLite to run the statement (py-spy, docs/benchmarks.md, issue 13).

A ``PreparedQuery`` builds its queryset once per thread with sentinel values for its parameters, compiles it,
and remembers where each sentinel landed among the statement's parameters. A call runs the same SQL with the
real values and builds the instance exactly as the ORM's ``ModelIterable`` does: the backend's value
converters, the ``select_related`` objects and the annotations. Compiled per thread, as Django's connections
are, so a compiler is only ever used with its own thread's connection.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators

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
        with connections[self.using].cursor() as cursor:
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
