"""Errors that services raise and every caller (API, UI, commands, workers) reports the same way.

They are ``rest_framework`` exceptions, so the API's exception handler turns them into the one error
body (``annotation.api.errors``); validation problems use DRF's ``ValidationError`` with field messages.
"""
from __future__ import annotations

from rest_framework import status
from rest_framework.exceptions import APIException


class Conflict(APIException):
    """The request is well formed but the current state refuses it (409): a different second submission,
    a round that is already training, a retry of a superseded job."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state."
    default_code = "conflict"
