"""Hostile input, generated from the published OpenAPI schema (schemathesis): every operation, as every
role (project admin, labeler, reviewer, site staff, a user of another project only, and anonymous), a few
examples each. No response of 500 or above, and every response
conforms to the schema (documented status code, content type and body)."""
from __future__ import annotations

import os

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from knox.models import AuthToken
from rlhf_platform.wsgi import application
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks

from tests.factories import best_first, make_ranking_task

EXAMPLES = 3  # per operation and role: the whole schema in a few minutes
# CI draws the same examples every run (a failure is a regression, not luck); FUZZ_RANDOM=1 draws new ones each
# run, to look for more (that is how the edges in test_api_edges.py were found).
DERANDOMIZE = not os.environ.get("FUZZ_RANDOM")
# No server error, and the responses say what the schema says: documented status codes, content types,
# bodies and headers. (positive_data_acceptance is left out: a schema cannot express every business rule,
# such as a correct password or ranks covering a task's candidates, so a 400 there is not a schema bug.)
CHECKS = [not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]


@pytest.fixture
def in_process_app():
    """Serve the WSGI app in this test's transaction: Django's test client also keeps the connection open
    across requests (closing it would end the test database's transaction)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield application
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def failures_for(schema, user) -> dict[str, str]:
    found = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=DERANDOMIZE)
        def run(case):
            if user is None:  # anonymous: no credentials at all
                case.call_and_validate(checks=CHECKS)
                return
            token = AuthToken.objects.create(user=user)[1]  # a fresh one: the logout operation revokes it
            case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failures, reported together
            found[operation.label] = str(exc)[:1500]
    return found


@pytest.mark.slow
@pytest.mark.parametrize("who", ["adam", "alice", "rita", "sam", "bob", None],
                         ids=["admin", "labeler", "reviewer", "staff", "outsider", "anonymous"])
def test_the_whole_schema_as_every_role(in_process_app, project_a, project_b, users, who):
    task = make_ranking_task(project_a, "something to rank")
    assert best_first(task)
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", in_process_app)
    assert failures_for(schema, users[who] if who else None) == {}
