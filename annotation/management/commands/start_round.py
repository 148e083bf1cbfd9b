from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from rest_framework.exceptions import APIException

from annotation.importing import format_errors
from annotation.loop import rounds
from annotation.loop.config import PATHS, PRESETS
from annotation.models import Project


class Command(BaseCommand):
    help = ("Start a training round on the labels collected so far: snapshot → SFT → RM → PPO (or the path's "
            "stages) → new candidates → next round's ranking tasks. Jobs run on the Celery 'training' queue.")

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project name or id")
        parser.add_argument("--config", help="JSON overrides per stage, or @file.json")
        parser.add_argument("--preset", choices=sorted(PRESETS), help="round preset (default: the project's)")
        parser.add_argument("--path", choices=list(PATHS), help="ppo: SFT → RM → PPO (default); rloo: SFT → RM → "
                            "RLOO; dpo: SFT → DPO")

    def handle(self, *args, project: str, config: str | None, preset: str | None = None, path: str | None = None,
               **options):
        target = Project.objects.filter(pk=int(project)).first() if project.isdigit() else None
        target = target or Project.objects.filter(name=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        try:
            text = Path(config[1:]).read_text() if config and config.startswith("@") else config or "{}"
            overrides = json.loads(text)
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"--config: {exc}") from None
        if preset:
            overrides = {**overrides, "preset": preset}
        if path:
            overrides = {**overrides, "path": path}
        try:
            round_ = rounds.start_round(project=target, config=overrides)
        except APIException as exc:
            raise CommandError("the round did not start:\n" + "\n".join(format_errors(exc.detail))) from None
        self.stdout.write(f"Round {round_.number} of {target.name!r} started; "
                          f"follow it at /manage/projects/{target.pk}/")
