from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from rest_framework.exceptions import ValidationError
from tqdm import tqdm

from annotation import exporting
from annotation.export_files import FILE_TYPES, write_export
from annotation.models import Project, ReviewStatus


class Command(BaseCommand):
    help = ("Export a project's labels for training: SFT (prompt/completion or messages), TRL pairwise "
            "(prompt/chosen/rejected/margin), k-way listwise, or each labeler's raw ranks beside the consensus; "
            "as JSONL, Parquet or an HF DatasetDict split by prompt hash. From a snapshot, or from the live "
            "labels filtered by round, review status and labeler (rejected labels are left out unless --status "
            "asks for them). See annotation/exporting.py for the columns.")

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project name or id")
        parser.add_argument("--format", required=True, choices=exporting.FORMATS)
        parser.add_argument("--file-type", choices=FILE_TYPES, default="jsonl")
        parser.add_argument("--out", required=True, type=Path, help="file (jsonl, parquet) or new directory (datasets)")
        parser.add_argument("--snapshot", type=int, help="export this snapshot's labels (id) instead of the live ones")
        parser.add_argument("--round", type=int, help="only tasks of this round (round 1 includes imported tasks)")
        parser.add_argument("--status", choices=ReviewStatus.values, help="only labels with this review status")
        parser.add_argument("--labeler", help="only this labeler's labels (username)")
        parser.add_argument("--ties", choices=exporting.TIES,
                            help="trl-pairwise: skip tied pairs (default), or emit both orders with margin 0 and tie")
        parser.add_argument("--aggregate", choices=exporting.AGGREGATES,
                            help="trl-pairwise, listwise: each labeler's rankings (default), or one consensus per task")

    def handle(self, *args, project: str, out: Path, file_type: str, **options):
        target = Project.objects.filter(pk=int(project)).first() if project.isdigit() else None
        target = target or Project.objects.filter(name=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        try:
            chosen = exporting.export_options(project=target, **{name: options[name] for name in (
                "format", "snapshot", "round", "status", "labeler", "ties", "aggregate")})
        except ValidationError as exc:
            raise CommandError("\n".join(f"--{field}: {message}" for field, messages in exc.detail.items()
                                         for message in messages)) from None
        total = exporting.label_count(target, chosen)
        with tqdm(total=total, desc="export", unit="label", disable=options["verbosity"] == 0) as bar:
            rows = exporting.rows(target, chosen, on_progress=bar.update)
            try:
                written = write_export(rows, out, fmt=chosen.format, file_type=file_type)
            except FileExistsError as exc:
                raise CommandError(str(exc)) from None
        self.stdout.write(f"wrote {written} {chosen.format} rows to {out}")
