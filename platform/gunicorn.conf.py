"""Gunicorn settings for production and scripts/run.sh; override any with GUNICORN_* variables.

gthread workers keep HTTP connections alive and overlap database round-trips; two processes per core
is a sensible default for this I/O-bound API.
"""
from __future__ import annotations

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 4))
keepalive = 30
timeout = 60
graceful_timeout = 20
max_requests = 20000
max_requests_jitter = 2000
preload_app = True
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
pythonpath = os.path.dirname(os.path.abspath(__file__))
