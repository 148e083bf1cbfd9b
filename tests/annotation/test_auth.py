"""Token auth for scripts and session auth (with CSRF) for the browser."""
from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from annotation import services
from annotation.auth import LoginThrottle, TokenCache, WriteThrottle
from tests.factories import make_ranking_task


def test_a_token_from_username_and_password_authenticates(users, project_a):
    anonymous = APIClient()
    response = anonymous.post("/api/auth/token/", {"username": "alice", "password": "pw"})
    assert response.status_code == 200
    client = APIClient(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    assert [p["name"] for p in client.get("/api/projects/").json()["results"]] == ["A"]


def test_a_wrong_password_gets_no_token_and_a_field_shaped_error(users):
    response = APIClient().post("/api/auth/token/", {"username": "alice", "password": "nope"})
    assert response.status_code == 400 and response.json()["fields"]["non_field_errors"]


def test_a_bad_token_is_a_401(users):
    assert APIClient(HTTP_AUTHORIZATION="Token nonsense").get("/api/projects/").status_code == 401


def test_session_auth_needs_the_csrf_token_for_writes(users, project_a):
    make_ranking_task(project_a)
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["alice"])
    url = f"/api/projects/{project_a.pk}/next-task/"
    assert client.get("/api/projects/").status_code == 200
    refused = client.post(url, {"kind": "ranking"}, content_type="application/json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["message"]
    client.get(f"/p/{project_a.pk}/ranking/")  # any page with a form sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    accepted = client.post(url, {"kind": "ranking"}, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 200


def _token(username: str = "alice") -> dict:
    response = APIClient().post("/api/auth/token/", {"username": username, "password": "pw"})
    assert response.status_code == 200, response.content
    return response.json()


def test_tokens_are_stored_hashed_and_expire(users, settings):
    issued = _token()
    stored = AuthToken.objects.get(user=users["alice"])
    assert issued["token"] not in (stored.digest, stored.token_key) and len(stored.digest) == 128
    assert issued["token"].startswith(stored.token_key)  # only a prefix is kept, to find the digest
    ttl = stored.expiry - stored.created
    assert timedelta(days=29) < ttl <= timedelta(days=30, seconds=5)
    AuthToken.objects.filter(pk=stored.pk).update(expiry=timezone.now() - timedelta(seconds=1))
    assert APIClient(HTTP_AUTHORIZATION=f"Token {issued['token']}").get("/api/projects/").status_code == 401
    assert services.purge_expired_tokens() == 1 and not AuthToken.objects.exists()


def test_a_user_lists_their_tokens_and_revokes_one_but_not_someone_elses(users):
    first, second, carols = _token(), _token(), _token("carol")
    alice = APIClient(HTTP_AUTHORIZATION=f"Token {first['token']}")
    listed = alice.get("/api/auth/tokens/").json()
    assert len(listed) == 2 and sum(t["current"] for t in listed) == 1
    assert all(first["token"] not in str(t) and second["token"] not in str(t) for t in listed)
    other_key = next(t["token_key"] for t in listed if not t["current"])
    carol_key = AuthToken.objects.get(user=users["carol"]).token_key
    assert alice.delete(f"/api/auth/tokens/{carol_key}/").status_code == 404  # not found, not "forbidden"
    assert APIClient(HTTP_AUTHORIZATION=f"Token {carols['token']}").get("/api/projects/").status_code == 200
    assert alice.delete(f"/api/auth/tokens/{other_key}/").status_code == 204
    assert APIClient(HTTP_AUTHORIZATION=f"Token {second['token']}").get("/api/projects/").status_code == 401
    assert alice.post("/api/auth/logout/").status_code == 204  # revokes the token in use
    assert alice.get("/api/projects/").status_code == 401


def test_repeated_failed_logins_lock_the_username_out_from_that_address(users, settings):
    settings.AXES_FAILURE_LIMIT = 3
    anonymous = APIClient()
    codes = [anonymous.post("/api/auth/token/", {"username": "alice", "password": "nope"}).status_code
             for _ in range(3)]
    assert codes == [400, 400, 429]  # the third failure reaches the limit
    locked = anonymous.post("/api/auth/token/", {"username": "alice", "password": "pw"})  # even the right one
    assert locked.status_code == 429 and locked.json()["code"] == "locked_out" and not AuthToken.objects.exists()
    page = Client().post("/accounts/login/", {"username": "alice", "password": "pw"})
    assert page.status_code == 429 and "Too many failed logins" in page.content.decode()
    assert "Content-Security-Policy" in page
    # Another address, or another username, is not locked out by these failures.
    assert APIClient(REMOTE_ADDR="10.0.0.9").post(
        "/api/auth/token/", {"username": "alice", "password": "pw"}).status_code == 200
    assert _token("carol")["token"]


def test_token_requests_are_throttled_per_address(users, monkeypatch):
    monkeypatch.setattr(LoginThrottle, "THROTTLE_RATES", {"login": "3/min"})
    cache.clear()
    codes = [APIClient().post("/api/auth/token/", {"username": "alice", "password": "pw"}).status_code
             for _ in range(4)]
    assert codes == [200, 200, 200, 429]


def test_writes_are_throttled_per_user_and_reads_are_not(users, project_a, client_for, monkeypatch):
    monkeypatch.setattr(WriteThrottle, "THROTTLE_RATES", {"writes": "2/min"})
    cache.clear()
    alice, carol = client_for("alice"), client_for("carol")
    url = f"/api/projects/{project_a.pk}/next-task/"
    assert [alice.post(url, {"kind": "ranking"}).status_code for _ in range(3)] == [204, 204, 429]
    assert alice.get("/api/projects/").status_code == 200
    assert carol.post(url, {"kind": "ranking"}).status_code == 204


def _remembered_token(username: str = "alice") -> tuple[str, APIClient]:
    """A token that has authenticated once, so this process remembers it (``annotation.auth.token_cache``)."""
    token = AuthToken.objects.create(user=get_user_model().objects.get(username=username))[1]
    client = APIClient(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/projects/").status_code == 200
    return token, client


def test_a_remembered_token_is_not_looked_up_again(users):
    _, client = _remembered_token()
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/me/stats/").status_code == 200
    assert not [q for q in queries.captured_queries if "knox_authtoken" in q["sql"] or '"auth_user"' in q["sql"]]


def test_a_revoked_token_is_refused_at_once_by_the_process_that_revoked_it(users):
    token, client = _remembered_token()
    _, other = _remembered_token()
    key = next(t.token_key for t in AuthToken.objects.all() if token.startswith(t.token_key))
    assert other.delete(f"/api/auth/tokens/{key}/").status_code == 204
    assert client.get("/api/projects/").status_code == 401
    assert other.post("/api/auth/logout/").status_code == 204
    assert other.get("/api/projects/").status_code == 401


def test_a_remembered_token_is_refused_once_it_expires(users, monkeypatch):
    _, client = _remembered_token()
    later = timezone.now() + timedelta(days=31)  # past API_TOKEN_TTL_HOURS' 30 days
    monkeypatch.setattr(timezone, "now", lambda: later)
    assert client.get("/api/projects/").status_code == 401


def test_a_deactivated_users_remembered_token_is_refused_at_once(users):
    _, client = _remembered_token()
    users["alice"].is_active = False
    users["alice"].save()
    assert client.get("/api/projects/").status_code == 401


def test_the_token_cache_forgets_the_least_recently_used_and_the_stale():
    cache_ = TokenCache(size=2)
    users_ = {n: get_user_model()(pk=n, username=f"u{n}") for n in (1, 2, 3)}

    def put(n, user, ttl=60, forgotten=0):
        cache_.put(f"digest {n}", user, AuthToken(digest=f"digest {n}", user=user, expiry=None), ttl,
                   forgotten=forgotten)

    for n, user in users_.items():
        put(n, user)
    assert cache_.get("digest 1") is None and cache_.get("digest 3")[0].pk == 3
    put(4, users_[1], ttl=0)
    assert cache_.get("digest 4") is None  # older than its time to live


def test_a_token_looked_up_while_another_was_revoked_is_not_remembered():
    """The lookup may have read a token that a concurrent request was revoking: remembering it would let it
    in for the cache's lifetime in the very process that revoked it."""
    cache_ = TokenCache()
    user = get_user_model()(pk=1, username="u")
    before = cache_.forgotten
    cache_.forget(digest="digest 1")  # the revocation lands between the lookup and the put
    cache_.put("digest 1", user, AuthToken(digest="digest 1", user=user, expiry=None), 60, forgotten=before)
    assert cache_.get("digest 1") is None


def test_the_write_allowance_comes_back_one_request_at_a_time(monkeypatch):
    """N at once, then one every period/N, with a Retry-After that says when; one number kept per user."""
    monkeypatch.setattr(WriteThrottle, "THROTTLE_RATES", {"writes": "3/min"})
    cache.clear()
    clock = [1000.0]
    monkeypatch.setattr(WriteThrottle, "timer", lambda self: clock[0])
    request = SimpleNamespace(method="POST", user=SimpleNamespace(is_authenticated=True, pk=7))

    def allowed() -> tuple[bool, float | None]:
        throttle = WriteThrottle()
        return throttle.allow_request(request, None), throttle.wait()

    assert [allowed()[0] for _ in range(3)] == [True, True, True]
    ok, wait = allowed()
    assert not ok and wait == pytest.approx(20.0)  # one request back every 60/3 s
    clock[0] += 19.9
    assert not allowed()[0]
    clock[0] += 0.2
    assert allowed()[0] and not allowed()[0]
    clock[0] += 60  # idle for a period: the whole allowance is back, never more
    assert [allowed()[0] for _ in range(4)] == [True, True, True, False]
    assert isinstance(cache.get("throttle_writes_7_3_60"), float)
    assert WriteThrottle().allow_request(SimpleNamespace(method="GET", user=request.user), None)
