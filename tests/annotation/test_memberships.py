"""Membership by invitation: a project admin invites, the invited user accepts; only site staff add an
account directly, and nobody learns about accounts outside their projects."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from annotation import memberships
from annotation.models import AuditEvent, Invitation, Membership, Role


def invite(client, project, role=Role.REVIEWER):
    response = client.post(f"/api/projects/{project.pk}/invitations/", {"role": role, "note": "for Olga"},
                           format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_an_invited_user_who_accepts_becomes_a_member_with_the_role(client_for, project_a, users):
    invitation = invite(client_for("adam"), project_a)
    stored = Invitation.objects.get(pk=invitation["id"])
    assert invitation["secret"] not in stored.digest and stored.digest == memberships.digest(invitation["secret"])
    assert invitation["url"] == f"/invitations/{invitation['secret']}/"
    response = client_for("olga").post("/api/invitations/accept/", {"secret": invitation["secret"]}, format="json")
    assert response.status_code == 200 and response.json()["role"] == Role.REVIEWER
    assert Membership.objects.get(project=project_a, user=users["olga"]).role == Role.REVIEWER
    stored.refresh_from_db()
    assert (stored.status, stored.accepted_by) == (Invitation.Status.ACCEPTED, users["olga"])
    assert list(AuditEvent.objects.order_by("id").values_list("action", "actor_name")) == [
        ("membership.invite", "adam"), ("membership.accept", "olga")]
    again = client_for("bob").post("/api/invitations/accept/", {"secret": invitation["secret"]}, format="json")
    assert again.status_code == 409 and "already accepted" in again.json()["message"]


def test_an_expired_revoked_or_unknown_invitation_admits_nobody(client_for, project_a, users):
    expired, revoked = invite(client_for("adam"), project_a), invite(client_for("adam"), project_a)
    Invitation.objects.filter(pk=expired["id"]).update(expires=timezone.now() - timedelta(seconds=1))
    assert client_for("adam").post(
        f"/api/projects/{project_a.pk}/invitations/{revoked['id']}/revoke/").status_code == 200
    olga = client_for("olga")
    assert "expired" in olga.post("/api/invitations/accept/", {"secret": expired["secret"]}).json()["message"]
    assert "revoked" in olga.post("/api/invitations/accept/", {"secret": revoked["secret"]}).json()["message"]
    assert olga.post("/api/invitations/accept/", {"secret": "made-up"}).status_code == 404
    assert not Membership.objects.filter(user=users["olga"]).exists()


def test_a_project_admin_cannot_add_accounts_nor_tell_which_ids_exist(client_for, project_a, users):
    adam = client_for("adam")
    url = f"/api/projects/{project_a.pk}/members/"
    existing = adam.post(url, {"user": users["olga"].pk, "role": Role.ADMIN}, format="json")
    missing = adam.post(url, {"user": 987654, "role": Role.ADMIN}, format="json")
    assert existing.status_code == missing.status_code == 404 and existing.json() == missing.json()
    assert not Membership.objects.filter(user=users["olga"]).exists()
    staff = client_for("sam").post(url, {"user": users["olga"].pk, "role": Role.LABELER}, format="json")
    assert staff.status_code == 201 and AuditEvent.objects.filter(action="membership.add").exists()


def test_a_project_admin_changes_roles_of_members_but_not_their_own(client_for, project_a, users):
    adam = client_for("adam")
    url = f"/api/projects/{project_a.pk}/members/"
    assert adam.post(url, {"user": users["carol"].pk, "role": Role.REVIEWER}, format="json").status_code == 200
    assert Membership.objects.get(project=project_a, user=users["carol"]).role == Role.REVIEWER
    assert adam.post(url, {"user": users["adam"].pk, "role": Role.LABELER}, format="json").status_code == 403
    event = AuditEvent.objects.get(action="membership.change_role")
    assert event.detail == {"previous": Role.LABELER, "role": Role.REVIEWER}
    assert adam.delete(f"{url}{users['carol'].pk}/").status_code == 204
    assert not Membership.objects.filter(project=project_a, user=users["carol"]).exists()


def test_the_invitation_page_shows_the_offer_on_get_and_answers_on_post(users, project_a):
    invitation, secret = memberships.invite(admin=users["adam"], project=project_a, role=Role.LABELER)
    client = Client()
    client.force_login(users["olga"])
    page = client.get(f"/invitations/{secret}/")
    assert page.status_code == 200 and "Join A?" in page.content.decode() and "adam" in page.content.decode()
    assert not Membership.objects.filter(user=users["olga"]).exists()  # a GET changes nothing
    response = client.post(f"/invitations/{secret}/", {"answer": "accept"})
    assert response.status_code == 302 and Membership.objects.filter(user=users["olga"], project=project_a).exists()
    assert "already accepted" in client.get(f"/invitations/{secret}/").content.decode()


@pytest.mark.parametrize("answer", ["decline"])
def test_declining_leaves_no_membership_and_closes_the_invitation(users, project_a, answer):
    invitation, secret = memberships.invite(admin=users["adam"], project=project_a, role=Role.LABELER)
    client = Client()
    client.force_login(users["olga"])
    assert client.post(f"/invitations/{secret}/", {"answer": answer}).status_code == 200
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.DECLINED
    assert not Membership.objects.filter(user=users["olga"]).exists()
