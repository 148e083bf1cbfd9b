from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from rest_framework.exceptions import APIException

from annotation import services
from annotation.importing import format_errors


class Command(BaseCommand):
    help = ("Register a base model folder (for example one written by `python -m training import-base`) for "
            "the whole site, so that any project can start from it. Its PROVENANCE.json is recorded.")

    def add_arguments(self, parser):
        parser.add_argument("path", help="the model folder (config.json, weights, tokenizer)")
        parser.add_argument("--name", required=True, help="the name admins pick it by")

    def handle(self, *args, path: str, name: str, **options):
        try:
            base = services.register_base(name=name, path=path)
        except APIException as exc:
            raise CommandError("not registered:\n" + "\n".join(format_errors(exc.detail))) from None
        self.stdout.write(f"registered base model #{base.pk} {base.name!r} at {base.artifact_path}")
