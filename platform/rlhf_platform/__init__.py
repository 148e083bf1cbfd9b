"""Django project for the RLHF platform.

Imported as ``rlhf_platform`` (``platform/`` is put on ``sys.path``, never imported as a package):
a package named ``platform`` would shadow the standard library module that ``uuid`` and ``torch`` use.
"""
from __future__ import annotations

from .celery import app as celery_app

__all__ = ["celery_app"]
