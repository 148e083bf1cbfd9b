"""The audit log records who did what to what, and why, in the action's own transaction."""
from __future__ import annotations

import pytest
from django.db import transaction

from annotation import audit
from annotation.models import AuditEvent


def test_an_event_names_the_actor_the_action_the_target_its_project_and_the_reason(project_a, users):
    event = audit.record(actor=users["adam"], action="project.update", target=project_a, reason="typo", field="name")
    event.refresh_from_db()
    assert (event.actor, event.actor_name, event.action) == (users["adam"], "adam", "project.update")
    assert (event.project, event.target_type, event.target_id) == (project_a, "annotation.project", project_a.pk)
    assert (event.reason, event.detail) == ("typo", {"field": "name"})


def test_an_event_rolls_back_with_its_action(project_a, users):
    with pytest.raises(RuntimeError), transaction.atomic():
        audit.record(actor=users["adam"], action="project.update", target=project_a)
        raise RuntimeError("the action failed")
    assert not AuditEvent.objects.exists()


def test_an_event_outlives_its_actor(project_a, users):
    audit.record(actor=users["olga"], action="membership.decline", target=project_a)
    users["olga"].delete()
    event = AuditEvent.objects.get()
    assert event.actor is None and event.actor_name == "olga"
