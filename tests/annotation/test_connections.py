"""Database connections outlive a request: opening one costs more CPU than a labeling request's own
queries (on SQLite about a millisecond per request: the connection, Django's SQL functions, the WAL
pragmas), so every engine keeps its connection for ``DB_CONN_MAX_AGE`` seconds."""
from __future__ import annotations

from django.core.signals import request_finished, request_started
from django.db import connection


def test_a_requests_end_leaves_its_database_connection_open_for_the_next_one(transactional_db):
    # The test client holds back the handler that closes old connections at a request's ends; a served
    # request runs it, so it is sent here as the handler sends it.
    request_started.send(sender=None)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    opened = connection.connection
    request_finished.send(sender=None)
    request_started.send(sender=None)
    assert opened is not None and connection.connection is opened
