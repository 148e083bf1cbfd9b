"""One error body for every API failure:

    {"status": 400, "code": "invalid", "message": "Invalid input.", "fields": {"entries": ["..."]}}

``fields`` holds field-level messages (``non_field_errors`` for the rest) and is empty otherwise.
"""
from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.views import exception_handler as drf_exception_handler


def _first_code(codes) -> str:
    if isinstance(codes, str):
        return codes
    if isinstance(codes, dict):
        codes = list(codes.values())
    for code in codes:
        found = _first_code(code)
        if found:
            return found
    return "error"


RETRY_AFTER_SECONDS = 2


class DatabaseUnavailable(exceptions.APIException):
    """The database could not answer (restarting, unreachable, locked): nothing was written, and the same
    request may be sent again."""
    status_code = 503
    default_code = "database_unavailable"
    default_detail = "The database is unavailable for a moment; nothing was saved. Retry the same request."


def exception_handler(exc, context):
    if isinstance(exc, (OperationalError, InterfaceError)):
        exc = DatabaseUnavailable()
        exc.wait = RETRY_AFTER_SECONDS  # DRF turns it into Retry-After
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        body = {"status": response.status_code, "code": "invalid", "message": "Invalid input.", "fields": detail}
    else:
        body = {
            "status": response.status_code,
            "code": _first_code(exc.get_codes()) if isinstance(exc, exceptions.APIException) else "error",
            "message": str(exc.detail) if hasattr(exc, "detail") else str(exc),
            "fields": {},
        }
    response.data = body
    return response


def not_found(request, exception=None):
    """The site's 404 (``handler404``): under /api/ the API's error body, so that a URL no route matches
    (``/api/candidates/-3/lineage/``: an id a route's converter refuses) still answers JSON; elsewhere
    Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"status": 404, "code": "not_found", "message": "Not found.", "fields": {}}, status=404)
    return defaults.page_not_found(request, exception)
