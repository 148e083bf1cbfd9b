"""The audit log: ``record`` writes one AuditEvent (who, what, to what, why, when) inside the caller's
transaction, so an action and its audit row commit or roll back together. Services call it for every
admin and review action; nothing ever updates or deletes an event."""
from __future__ import annotations

from django.db import models

from .models import AuditEvent, Project


def record(*, actor, action: str, target: models.Model | None = None, project: Project | None = None,
           reason: str = "", **detail) -> AuditEvent:
    """Log ``action`` (e.g. "review.reject", "membership.invite") by ``actor`` on ``target``."""
    if project is None and target is not None:
        project = target if isinstance(target, Project) else getattr(target, "project", None)
    return AuditEvent.objects.create(
        actor=actor if getattr(actor, "pk", None) else None,
        actor_name=getattr(actor, "get_username", lambda: "system")(),
        action=action, project=project, reason=reason, detail=detail,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=target.pk if target is not None else None,
    )
