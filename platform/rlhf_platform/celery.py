"""The Celery app: configured from Django settings (CELERY_*), tasks autodiscovered from installed apps.

Two queues: ``default`` for light work and ``training`` for jobs that load torch.
"""
from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlhf_platform.settings")

app = Celery("rlhf_platform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("default"), Queue("training"))
app.autodiscover_tasks()
