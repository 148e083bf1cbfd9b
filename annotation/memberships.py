"""Who belongs to a project, and how they came to: by an invitation that they accepted, or added by site
staff. A project admin can invite (with a role), revoke an invitation, change a member's role or remove a
member, but cannot add an account directly, and learns nothing about accounts that are not members: an
unknown user id and a user who is not a member get the same answer.

An invitation is a link with a secret; only the secret's SHA-256 is stored. Whoever opens the link while
logged in sees the project and the role and accepts or declines; it works once and expires. Every action
here writes an audit event in the same transaction.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError

from . import audit, gold
from .errors import Conflict
from .models import Invitation, Membership, Project, Role

INVITATION_DAYS = 7


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def invite(*, admin, project: Project, role: str, note: str = "", days: int = INVITATION_DAYS
           ) -> tuple[Invitation, str]:
    """A new invitation and its secret (returned once, never stored)."""
    if role not in Role.values:
        raise ValidationError({"role": [f"must be one of {', '.join(Role.values)}"]})
    if not 1 <= days <= 90:
        raise ValidationError({"days": ["must be between 1 and 90"]})
    secret = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(project=project, role=role, invited_by=admin, digest=digest(secret),
                                           note=note, expires=timezone.now() + timedelta(days=days))
    audit.record(actor=admin, action="membership.invite", target=invitation, project=project, role=role, note=note)
    return invitation, secret


def pending(secret: str, *, lock: bool = False) -> Invitation:
    """The invitation a secret opens, while it can still be answered; otherwise a clear error."""
    rows = Invitation.objects.select_related("project", "invited_by")
    if lock:
        rows = rows.select_for_update(of=("self",))
    invitation = rows.filter(digest=digest(secret)).first()
    if invitation is None:
        raise NotFound("No such invitation.")
    if invitation.status != Invitation.Status.PENDING:
        raise Conflict(f"This invitation was already {invitation.status}.")
    if invitation.expires <= timezone.now():
        raise Conflict("This invitation has expired: ask the project's admin for a new one.")
    return invitation


@transaction.atomic
def accept(*, user, secret: str) -> Membership:
    invitation = pending(secret, lock=True)
    try:
        with transaction.atomic():
            membership = Membership.objects.create(project=invitation.project, user=user, role=invitation.role)
    except IntegrityError:
        current = Membership.objects.get(project=invitation.project, user=user)
        raise Conflict(f"You are already a member of this project ({current.role}).") from None
    Invitation.objects.filter(pk=invitation.pk).update(status=Invitation.Status.ACCEPTED, accepted_by=user,
                                                       answered=timezone.now())
    gold.provision_gold_slots(project=invitation.project)  # the newcomer can be served every gold task
    audit.record(actor=user, action="membership.accept", target=invitation, project=invitation.project,
                 role=invitation.role)
    return membership


@transaction.atomic
def decline(*, user, secret: str) -> None:
    invitation = pending(secret, lock=True)
    Invitation.objects.filter(pk=invitation.pk).update(status=Invitation.Status.DECLINED, answered=timezone.now())
    audit.record(actor=user, action="membership.decline", target=invitation, project=invitation.project)


@transaction.atomic
def revoke(*, admin, project: Project, invitation_id: int) -> Invitation:
    invitation = Invitation.objects.select_for_update().filter(pk=invitation_id, project=project).first()
    if invitation is None:
        raise NotFound("No such invitation in this project.")
    if invitation.status != Invitation.Status.PENDING:
        raise Conflict(f"This invitation was already {invitation.status}.")
    Invitation.objects.filter(pk=invitation.pk).update(status=Invitation.Status.REVOKED, answered=timezone.now())
    audit.record(actor=admin, action="membership.revoke_invitation", target=invitation, project=project)
    invitation.refresh_from_db()
    return invitation


@transaction.atomic
def set_member(*, admin, project: Project, user_id: int, role: str) -> tuple[Membership, bool]:
    """Site staff add anyone with any role; a project admin only changes the role of a member. Anyone
    else's id, existing or not, is "not a member" (no account enumeration). Returns (membership, created)."""
    if role not in Role.values:
        raise ValidationError({"role": [f"must be one of {', '.join(Role.values)}"]})
    membership = Membership.objects.select_for_update().filter(project=project, user_id=user_id).first()
    if membership is None:
        if not admin.is_staff:
            raise NotFound("Not a member of this project: invite them instead (POST …/invitations/).")
        user = get_user_model().objects.filter(pk=user_id).first()
        if user is None:
            raise NotFound("No such user.")
        membership = Membership.objects.create(project=project, user=user, role=role)
        gold.provision_gold_slots(project=project)
        audit.record(actor=admin, action="membership.add", target=membership, project=project, role=role,
                     user=user.get_username())
        return membership, True
    if membership.user_id == admin.pk and role != Role.ADMIN and not admin.is_staff:
        raise PermissionDenied("You cannot demote yourself; another admin can.")
    previous = membership.role
    Membership.objects.filter(pk=membership.pk).update(role=role)
    membership.refresh_from_db()
    audit.record(actor=admin, action="membership.change_role", target=membership, project=project,
                 previous=previous, role=role)
    return membership, False


@transaction.atomic
def remove_member(*, admin, project: Project, user_id: int) -> None:
    membership = Membership.objects.filter(project=project, user_id=user_id).select_related("user").first()
    if membership is None:
        raise NotFound("Not a member of this project.")
    audit.record(actor=admin, action="membership.remove", target=project, project=project,
                 user=membership.user.get_username(), role=membership.role)
    membership.delete()
