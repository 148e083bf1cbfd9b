"""API tokens, throttles and login protection.

**Tokens: django-rest-knox.** Only a SHA-512 digest of each token is stored (a database leak gives no
usable token), every token expires (``API_TOKEN_TTL_HOURS``), a user may hold several (one per script
or machine), list them and revoke any one, and the secret is shown once, when it is made. DRF's own
``authtoken`` stores the key in plain text, one per user, forever. knox is maintained by the Jazzband
community and keeps DRF's ``Authorization: Token …`` header, so scripts only need a new token.

**Lockout: django-axes** counts failed logins per username and IP address on every login path (the
login page, the admin and ``POST /api/auth/token/``, which authenticate with the request) and refuses
that pair for a cool-off time after ``AXES_FAILURE_LIMIT`` failures.

**Throttles: DRF's.** ``login`` limits token requests per client address; ``writes`` limits each user's
(or address's) unsafe requests. Counts live in the default cache (per process unless a shared cache is
configured), which is enough to stop a runaway script or a password sprayer.
"""
from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle


class TokenAuthentication(KnoxTokenAuthentication):
    """knox's token check, without its sweep of the user's other tokens on every request (one more query
    per call): an expired token is refused here, and ``purge_expired_tokens`` deletes expired ones."""

    def _cleanup_token(self, auth_token) -> bool:
        return auth_token.expiry is not None and auth_token.expiry < timezone.now()


class WriteThrottle(UserRateThrottle):
    """Unsafe requests (POST, PUT, PATCH, DELETE) per user, or per address when anonymous."""

    scope = "writes"

    def allow_request(self, request, view) -> bool:
        return request.method in SAFE_METHODS or super().allow_request(request, view)


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
