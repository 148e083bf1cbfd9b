from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from rest_framework.exceptions import APIException
from tqdm import tqdm

from annotation.importing import format_errors
from annotation.imports.importer import ImportReport, import_file
from annotation.imports.readers import FORMATS
from annotation.models import Project


def summary(report: ImportReport) -> list[str]:
    """The report in a few lines for people."""
    created, duplicates, ties = report["created"], report["duplicates"], report["ties"]
    by_k = ", ".join(f"k={k}: {n}" for k, n in report["rankings_by_k"].items())
    lines = [
        f"read {report['records']} records ({report['format']}"
        + (f"; labels from {report['source']!r}" if report["source"] else "") + ")",
        f"created {created['prompts']} prompts, {created['demonstrations']} demonstrations, "
        f"{created['rankings']} rankings" + (f" ({by_k})" if by_k else "") + f", {created['candidates']} candidates",
        f"ties: {ties['rankings']} rankings with a tie ({ties['pairs']} tied pairs)",
        f"already there: {duplicates['prompts']} prompts, {duplicates['demonstrations']} demonstrations, "
        f"{duplicates['rankings']} rankings",
    ]
    lines += [f"left out: {n} × {reason}" for reason, n in report["left_out"].items()]
    return lines


class Command(BaseCommand):
    help = ("Import prompts, demonstrations and rankings from a file (formats: " + ", ".join(FORMATS) + "), all "
            "or nothing: every bad line is reported with its number and nothing is written. Prompts and labels "
            "already there are counted, not created again.")

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--project", required=True, help="project name or id")
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument("--source", help="the name imported labels are recorded under (their labeler is the "
                                             "inactive user '<source>-import'); default: the format's own")
        parser.add_argument("--json", action="store_true", dest="as_json", help="print the report as JSON")

    def handle(self, *args, file: Path, project: str, format: str, source: str | None, as_json: bool,
               **options):
        target = Project.objects.filter(pk=int(project)).first() if project.isdigit() else None
        target = target or Project.objects.filter(name=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        if not file.is_file():
            raise CommandError(f"no file {file}")
        with tqdm(desc="import", unit="prompt", disable=options["verbosity"] == 0 or as_json) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            try:
                report = import_file(project=target, path=file, fmt=format, source=source, on_progress=progress)
            except APIException as exc:
                raise CommandError("nothing was imported:\n" + "\n".join(format_errors(exc.detail))) from None
        self.stdout.write(json.dumps(report, indent=2) if as_json else "\n".join(summary(report)))
