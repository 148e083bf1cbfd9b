"""API tokens, throttles and login protection.

**Tokens: django-rest-knox.** Only a SHA-512 digest of each token is stored (a database leak gives no
usable token), every token expires (``API_TOKEN_TTL_HOURS``), a user may hold several (one per script
or machine), list them and revoke any one, and the secret is shown once, when it is made. DRF's own
``authtoken`` stores the key in plain text, one per user, forever. knox is maintained by the Jazzband
community and keeps DRF's ``Authorization: Token …`` header, so scripts only need a new token.

**A per-process cache of authenticated tokens.** knox finds a token by its prefix and compares SHA-512
digests, then loads the user: a query and a hash on every call. ``TokenAuthentication`` remembers, for
``API_TOKEN_CACHE_SECONDS`` (30 s) and for at most ``TOKEN_CACHE_SIZE`` tokens, the user and token that a
digest authenticated. Revocation is immediate in the process that revokes (deleting a token, or saving or
deleting its user, drops the entry by signal: logout, ``DELETE /api/auth/tokens/{key}/``, the admin,
deactivating the user); **other processes keep accepting a revoked token, or a deactivated user's, until
their entry is older than the TTL.** A token past its expiry is refused at once everywhere. 0 turns the
cache off.

**Lockout: django-axes** counts failed logins per username and IP address on every login path (the
login page, the admin and ``POST /api/auth/token/``, which authenticate with the request) and refuses
that pair for a cool-off time after ``AXES_FAILURE_LIMIT`` failures.

**Throttles: DRF's.** ``login`` limits token requests per client address; ``writes`` limits each user's
(or address's) unsafe requests, keeping one number per user (``WriteThrottle``). Counts live in the default
cache (per process unless a shared cache is configured), which is enough to stop a runaway script or a
password sprayer.
"""
from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from knox.crypto import hash_token
from knox.models import AuthToken
from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

TOKEN_CACHE_SIZE = 4096


class TokenCache:
    """Token digest → (user, token) for a short time, least recently used out first; thread-safe (gunicorn
    threads share it). Hands out copies, so no request sees another's changes to the user or token."""

    def __init__(self, size: int = TOKEN_CACHE_SIZE) -> None:
        self.size = size
        self.forgotten = 0  # how many times anything was forgotten: see put
        self._entries: OrderedDict[str, tuple[float, object, AuthToken]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str):
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            deadline, user, token = entry
            if deadline < time.monotonic() or (token.expiry is not None and token.expiry < timezone.now()):
                del self._entries[digest]
                return None
            self._entries.move_to_end(digest)
        user, token = copy.copy(user), copy.copy(token)
        token.user = user
        return user, token

    def put(self, digest: str, user, token: AuthToken, ttl: float, *, forgotten: int) -> None:
        """Remember a token looked up when ``self.forgotten`` was ``forgotten``; if anything was forgotten
        since, the lookup may have raced a revocation, so the token is not remembered."""
        with self._lock:
            if self.forgotten != forgotten:
                return
            self._entries[digest] = (time.monotonic() + ttl, copy.copy(user), copy.copy(token))
            self._entries.move_to_end(digest)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def forget(self, *, digest: str | None = None, user_id: int | None = None) -> None:
        with self._lock:
            self.forgotten += 1
            if digest is not None:
                self._entries.pop(digest, None)
            if user_id is not None:
                for key in [key for key, (_, user, _) in self._entries.items() if user.pk == user_id]:
                    del self._entries[key]


token_cache = TokenCache()


class TokenAuthentication(KnoxTokenAuthentication):
    """knox's token check, remembered per process for ``API_TOKEN_CACHE_SECONDS`` (see above), and without
    knox's sweep of the user's other tokens on every request (one more query per call): an expired token
    is refused here, and ``purge_expired_tokens`` deletes expired ones."""

    def authenticate_credentials(self, token: bytes):
        ttl = settings.API_TOKEN_CACHE_SECONDS
        try:
            digest = hash_token(token.decode("utf-8"))
        except (UnicodeDecodeError, TypeError, ValueError):
            return super().authenticate_credentials(token)  # knox refuses it the way it always did
        if ttl > 0 and (hit := token_cache.get(digest)) is not None:
            return hit
        forgotten = token_cache.forgotten
        user, auth_token = super().authenticate_credentials(token)
        if ttl > 0:
            token_cache.put(digest, user, auth_token, ttl, forgotten=forgotten)
        return user, auth_token

    def _cleanup_token(self, auth_token) -> bool:
        return auth_token.expiry is not None and auth_token.expiry < timezone.now()


@receiver([post_save, post_delete], sender=AuthToken, dispatch_uid="annotation.auth.forget_token")
def _forget_token(sender, instance, **kwargs) -> None:
    token_cache.forget(digest=instance.digest)


@receiver([post_save, post_delete], sender=get_user_model(), dispatch_uid="annotation.auth.forget_users_tokens")
def _forget_users_tokens(sender, instance, **kwargs) -> None:
    token_cache.forget(user_id=instance.pk)


class WriteThrottle(UserRateThrottle):
    """Unsafe requests (POST, PUT, PATCH, DELETE) per user, or per address when anonymous.

    A rate of N per period allows N at once, then one every period/N (the generic cell rate algorithm: one
    number per user, the time at which their allowance is full again). DRF's throttle keeps every request's
    time within the period and copies that list in and out of the cache on each request: at 1,200/min a busy
    labeler's list held hundreds of entries, about 5 % of the server's CPU in a labeling cycle (issue 13).
    """

    scope = "writes"

    def allow_request(self, request, view) -> bool:
        if request.method in SAFE_METHODS or self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        interval = self.duration / self.num_requests
        now = self.timer()
        full_at = max(float(self.cache.get(self.key, 0.0)), now)  # when the allowance is whole again
        self.wait_seconds = full_at + interval - now - self.duration
        if self.wait_seconds > 0:
            return False
        self.cache.set(self.key, full_at + interval, self.duration)
        return True

    def wait(self) -> float | None:
        return getattr(self, "wait_seconds", None)

    def get_cache_key(self, request, view) -> str | None:
        key = super().get_cache_key(request, view)  # a new rate starts everyone with a whole allowance
        return key and f"{key}_{self.num_requests}_{self.duration}"


class LoginThrottle(AnonRateThrottle):
    """Token requests per client address, whoever they claim to be."""

    scope = "login"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


def lockout_response(request, original_response=None, credentials=None) -> HttpResponse:
    """What a locked-out login attempt gets (django-axes' AXES_LOCKOUT_CALLABLE): the API's error shape
    under /api/, the lockout page elsewhere; 429 either way."""
    minutes = max(1, round(settings.AXES_COOLOFF_TIME.total_seconds() / 60))
    message = (f"Too many failed logins: this username is locked out from your address for {minutes} minutes. "
               "A site admin can lift it (manage.py axes_reset_username).")
    if request.path.startswith("/api/"):
        return JsonResponse({"status": 429, "code": "locked_out", "message": message, "fields": {}}, status=429)
    return render(request, "registration/locked_out.html", {"message": message}, status=429)
