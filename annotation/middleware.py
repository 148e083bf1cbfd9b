"""Response middleware: the request log, and the Content-Security-Policy on every HTML page the site
serves (the labeler UI, the login and password pages, the admin and the API docs). Model output is
untrusted text; under this policy no inline script and nothing from another origin runs, so even a
sanitizer bug could not execute it."""
from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse

request_log = logging.getLogger("annotation.requests")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.get("Content-Type", "").startswith("text/html"):
            response.setdefault("Content-Security-Policy", CSP)
        return response


class RequestLogMiddleware:
    """One log record per request with its fields as structured data (method, path, status, ms, user),
    which the JSON formatter writes as keys (LOG_FORMAT=json). Off with LOG_REQUESTS=false."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not settings.LOG_REQUESTS:
            return self.get_response(request)
        started = time.perf_counter()
        response = self.get_response(request)
        user = getattr(request, "user", None)
        fields = {"method": request.method, "path": request.path, "status": response.status_code,
                  "ms": round((time.perf_counter() - started) * 1000, 1),
                  "user": user.pk if getattr(user, "is_authenticated", False) else None}
        request_log.info("%(method)s %(path)s %(status)s %(ms)sms", fields, extra=fields)
        return response


class DatabaseUnavailableMiddleware:
    """A page whose database is unreachable for a moment (a restart, a failover) answers 503 with
    Retry-After instead of a server error; the API's exception handler does the same for the API."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, (OperationalError, InterfaceError)):
            response = HttpResponse("The database is unavailable for a moment; nothing was saved. Try again.",
                                    status=503, content_type="text/plain; charset=utf-8")
            response["Retry-After"] = "2"
            return response
        return None
