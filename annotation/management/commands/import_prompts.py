from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from rest_framework.exceptions import APIException
from tqdm import tqdm

from annotation import services
from annotation.importing import FORMATS, format_errors, read_import_file
from annotation.models import Project


class Command(BaseCommand):
    help = ("Import prompts (and k candidates each, for ranking tasks) from a JSONL file, all or nothing. "
            "Bad lines are reported with their numbers and nothing is imported.")

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--project", required=True, help="project name or id")
        parser.add_argument("--format", choices=FORMATS, default="items")

    def handle(self, *args, file: Path, project: str, format: str, **options):
        target = Project.objects.filter(pk=int(project)).first() if project.isdigit() else None
        target = target or Project.objects.filter(name=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        try:
            items, line_numbers, left_out = read_import_file(file, fmt=format)
            with tqdm(total=len(items), desc="import", unit="prompt", disable=options["verbosity"] == 0) as bar:
                result = services.bulk_create_prompts(
                    project=target, items=items, line_numbers=line_numbers,
                    on_progress=lambda done, total: bar.update(done - bar.n),
                )
        except APIException as exc:
            raise CommandError("nothing was imported:\n" + "\n".join(format_errors(exc.detail))) from None
        self.stdout.write(f"imported {len(result.created)} prompts into {target.name!r}; "
                          f"{len(result.duplicates)} already existed; {left_out} lines left out as unusable")
