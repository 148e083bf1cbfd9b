"""Import a file into a project: check all of it, then write all of it in one transaction, and report.

Imported labels keep their source. Each is submitted through ``services`` by an inactive pseudo-user,
a labeler of the project named ``<source>-import`` (``hh-rlhf-import``, ``oasst-import``,
``finegrained-rlhf-import``, ``trl-import``, or the name the caller gives), or
``<source>-import.<author>`` when the source names the person (OpenAssistant's ``user_id``, ASQA's gold
answers). Each label sits in a task of its own, with one slot, complete on import; the labelers' queue
never shows it. Its prompt gets the project's usual tasks (a demonstration task when the project
collects demonstrations), like any imported prompt.

Duplicates, so a second import of a file creates nothing:
- a prompt by its content hash in the project (``services``);
- a demonstration by (prompt, source user, text);
- a ranking by (prompt, source user, its responses with their ranks);
- a candidate response by (prompt, text): the answers of one FineGrainedRLHF question are 4 candidates
  however many pairwise rankings hold them.
"""
from __future__ import annotations

import re
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Max
from rest_framework.exceptions import APIException, ValidationError

from .. import services
from ..api.serializers import PromptInSerializer
from ..importing import READ_ERRORS, format_errors
from ..models import Candidate, Demonstration, Membership, Project, Prompt, Ranking, Role, Task, TaskKind
from .readers import DEFAULT_SOURCES, READERS, SOURCE_NAME, BadLine, LeftOut, Ranked, Record, Written

MAX_REPORTED_LINES = 1000  # a wholly wrong file must not make an error body as large as itself
AUTHOR_UNSAFE = re.compile(r"[^\w.@+-]")  # what Django's username validator refuses

Progress = Callable[[int, int], None]


class ImportReport(TypedDict):
    format: str
    source: str  # the label source recorded on imported labels ("" for formats without labels)
    records: int  # source records read (lines, array elements, CSV rows)
    created: dict[str, int]  # prompts, demonstrations, rankings, candidates
    duplicates: dict[str, int]  # prompts already in the project; labels already imported from this source
    rankings_by_k: dict[str, int]  # created rankings by their number of responses
    ties: dict[str, int]  # created rankings with a tie, and the tied pairs in them
    left_out: dict[str, int]  # reason → count: what the source holds that became neither prompt nor label


def import_file(*, project: Project, path: Path, fmt: str, source: str | None = None,
                on_progress: Progress | None = None) -> ImportReport:
    """Import a file of ``fmt`` (``readers.FORMATS``) into ``project``, all or nothing.

    The whole file is read and checked first and nothing is written if any record is bad: the
    ValidationError ``{"lines": {n: [...]}}`` names every bad line (up to ``MAX_REPORTED_LINES``). Then
    the file is read again and written in one transaction; ``on_progress(done, total)`` follows the
    records. Memory does not grow with the file, except for the ids of prompts that were already there.
    """
    source = _source_for(fmt, source)
    total = _check_file(project, path, fmt, source)
    with transaction.atomic():
        return _write_file(project, path, fmt, source, total, on_progress)


def import_upload(*, project: Project, upload, fmt: str, source: str | None = None,
                  on_progress: Progress | None = None) -> ImportReport:
    """``import_file`` for an uploaded file (Django's ``UploadedFile``), read from a temporary file so both
    passes stream it: Django's own when it spooled a large upload to disk, else a copy. Gzip is recognised
    by content."""
    if hasattr(upload, "temporary_file_path"):  # no second copy of a large file on disk
        return import_file(project=project, path=Path(upload.temporary_file_path()), fmt=fmt, source=source,
                           on_progress=on_progress)
    with tempfile.NamedTemporaryFile(prefix="import-", suffix=".data") as copy:
        for chunk in upload.chunks():
            copy.write(chunk)
        copy.flush()
        return import_file(project=project, path=Path(copy.name), fmt=fmt, source=source, on_progress=on_progress)


def _source_for(fmt: str, source: str | None) -> str:
    if fmt not in READERS:
        raise ValidationError({"format": [f"unknown format {fmt!r}; use one of {', '.join(READERS)}"]})
    source = source or DEFAULT_SOURCES.get(fmt, "")
    if source and not re.match(SOURCE_NAME, source):
        raise ValidationError({"source": ["a source is 1–64 lowercase letters, digits, '.', '_' or '-'"]})
    return source


def clean_record(project: Project, record: Record) -> dict[str, Any]:
    """The record's prompt item as the services take it, checked by the rules every import follows
    (a prompt's shape, the last turn the user's, exactly k unlabeled candidates); raises ValidationError."""
    item = PromptInSerializer(data=record.prompt)
    if not item.is_valid():
        raise ValidationError(item.errors)
    data = dict(item.validated_data)
    services._clean_prompt_content(data)
    services._clean_candidates(project, data.get("candidates"))
    return data


class _LineErrors:
    """Errors by line number, at most MAX_REPORTED_LINES of them listed."""

    def __init__(self):
        self.lines: dict[str, Any] = {}
        self.unlisted, self.last_unlisted = 0, ""
        self.file: list[str] = []

    def add(self, line: int, detail) -> None:
        key = str(line)
        if key in self.lines:  # a second bad record of the same line (an OpenAssistant tree holds many)
            self.lines[key] = format_errors(self.lines[key]) + format_errors(detail)
        elif len(self.lines) < MAX_REPORTED_LINES:
            self.lines[key] = detail
        elif key != self.last_unlisted:  # lines come in order: a line's second error is not a new line
            self.unlisted, self.last_unlisted = self.unlisted + 1, key

    def raise_any(self) -> None:
        if not self.lines and not self.file:
            return
        more = [f"{self.unlisted} more bad lines are not listed"] if self.unlisted else []
        raise ValidationError({**({"lines": self.lines} if self.lines else {}),
                               **({"file": self.file + more} if self.file or more else {})})


def _check_file(project: Project, path: Path, fmt: str, source: str) -> int:
    """Pass 1: every record read and checked, nothing written. Returns the number of prompt records."""
    errors, records, entries = _LineErrors(), 0, 0
    try:
        for entry in READERS[fmt](path, source):
            entries += 1
            if isinstance(entry, BadLine):
                errors.add(entry.line, entry.errors)
            elif isinstance(entry, Record):
                records += 1
                try:
                    clean_record(project, entry)
                except ValidationError as exc:
                    errors.add(entry.line, exc.detail)
    except READ_ERRORS as exc:
        errors.file.append(f"cannot read the file as UTF-8 text (or gzip of it): {exc}")
    if not entries and not errors.file:
        errors.file.append("the file holds no records")
    errors.raise_any()
    return records


def _write_file(project: Project, path: Path, fmt: str, source: str, total: int,
                on_progress: Progress | None) -> ImportReport:
    """Pass 2, inside the caller's transaction: any error rolls the whole file back."""
    writer = _Writer(project, source, on_progress=on_progress, total=total)
    left_out: Counter[str] = Counter()
    records, last_line = 0, None
    for entry in READERS[fmt](path, source):
        if entry.line != last_line:
            records, last_line = records + 1, entry.line
        if isinstance(entry, LeftOut):
            left_out[entry.reason] += 1
            continue
        if isinstance(entry, BadLine):  # the file changed since it was checked
            writer.errors.add(entry.line, entry.errors)
            continue
        try:
            item = clean_record(project, entry)
        except APIException as exc:
            writer.errors.add(entry.line, exc.detail)
            writer.progress()
            continue
        writer.add(entry, item)
    writer.flush()
    writer.errors.raise_any()
    return writer.report(fmt=fmt, records=records, left_out=left_out)


def _tied_pairs(ranks: list[int]) -> int:
    return sum(1 for i, a in enumerate(ranks) for b in ranks[i + 1:] if a == b)


class _Writer:
    """Writes records through the services and counts what it created and what was already there.

    Records wait in a batch of ``services.BULK_CHUNK``: the batch's prompts are found or created together
    (a few statements, ``services.get_or_create_prompts``), then each record's labels are written."""

    def __init__(self, project: Project, source: str, *, on_progress: Progress | None = None, total: int = 0):
        self.project, self.source = project, source
        self.on_progress, self.total, self.done = on_progress, total, 0
        self.errors = _LineErrors()
        self.batch: list[tuple[Record, dict[str, Any]]] = []
        self.users: dict[str, Any] = {}
        # Prompts with a larger id were created by this import (ids only grow), so finding one again
        # (a prompt with several pairs) is no duplicate.
        self.last_prompt_before = Prompt.objects.aggregate(last=Max("pk"))["last"] or 0
        self.prompts_found: set[int] = set()
        self.created: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.by_k: Counter[int] = Counter()
        self.ties: Counter[str] = Counter()

    def progress(self) -> None:
        self.done += 1
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)

    def add(self, record: Record, item: dict[str, Any]) -> None:
        """A checked record, written with its batch."""
        self.batch.append((record, item))
        if len(self.batch) >= services.BULK_CHUNK:
            self.flush()

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            return
        prompts = services.get_or_create_prompts(project=self.project, items=[item for _, item in batch],
                                                 source=Prompt.Source.IMPORTED)
        for (record, item), (prompt, created) in zip(batch, prompts, strict=True):
            try:
                with transaction.atomic():
                    self.write(record, item, prompt, created)
            except APIException as exc:
                self.forget_users()  # rolled back with the record
                self.errors.add(record.line, exc.detail)
            self.progress()

    def write(self, record: Record, item: dict[str, Any], prompt: Prompt, created: bool) -> None:
        if created:
            self.created["prompts"] += 1
            self.created["candidates"] += len(item.get("candidates") or ())
        elif prompt.pk <= self.last_prompt_before and prompt.pk not in self.prompts_found:
            self.prompts_found.add(prompt.pk)
            self.duplicates["prompts"] += 1
        for written in record.demonstrations:
            self._demonstration(prompt, written)
        for ranked in record.rankings:
            self._ranking(prompt, ranked)

    def _demonstration(self, prompt: Prompt, written: Written) -> None:
        author = self._user(written.author)
        if Demonstration.objects.filter(prompt=prompt, author=author, text=written.text).exists():
            self.duplicates["demonstrations"] += 1
            return
        task = services.create_task(prompt=prompt, kind=TaskKind.DEMONSTRATION, overlap=1)
        services.submit_demonstration(author=author, task=task, text=written.text, seconds_spent=0)
        self.created["demonstrations"] += 1

    def _ranking(self, prompt: Prompt, ranked: Ranked) -> None:
        labeler = self._user(ranked.author)
        content = sorted(zip(ranked.responses, ranked.ranks, strict=True))
        # The prompt's tasks first, then their rankings by this source: two index lookups. (One query joining
        # rankings to tasks was planned as a scan of the source's rankings on PostgreSQL, 0.6 s a record
        # inside a large import, whose statistics are stale until it commits.)
        task_ids = list(Task.objects.filter(prompt=prompt, kind=TaskKind.RANKING).values_list("id", flat=True))
        for ranking in Ranking.objects.filter(task_id__in=task_ids, labeler=labeler).prefetch_related(
                "entries__candidate"):
            if sorted((e.candidate.text, e.rank) for e in ranking.entries.all()) == content:
                self.duplicates["rankings"] += 1
                return
        origins = ranked.origins or [Candidate.Origin.IMPORTED] * ranked.k
        candidates = [self._candidate(prompt, text, origin)
                      for text, origin in zip(ranked.responses, origins, strict=True)]
        task = services.create_task(prompt=prompt, kind=TaskKind.RANKING, candidates=candidates, overlap=1)
        services.submit_ranking(labeler=labeler, task=task, seconds_spent=0, entries=[
            {"candidate": c.pk, "rank": rank} for c, rank in zip(candidates, ranked.ranks, strict=True)])
        self.created["rankings"] += 1
        self.by_k[ranked.k] += 1
        if tied := _tied_pairs(ranked.ranks):
            self.ties["rankings"] += 1
            self.ties["pairs"] += tied

    def _candidate(self, prompt: Prompt, text: str, origin: str) -> Candidate:
        found = Candidate.objects.filter(
            prompt=prompt, text=text, origin__in=(Candidate.Origin.IMPORTED, Candidate.Origin.HUMAN)).first()
        if found is not None:
            return found
        self.created["candidates"] += 1
        return Candidate.objects.create(prompt=prompt, text=text, origin=origin)

    def _user(self, author: str):
        """The inactive pseudo-user who stands for the source (and the author within it), a labeler of
        the project."""
        name = f"{self.source}-import" + ("." + AUTHOR_UNSAFE.sub("-", author)[:80] if author else "")
        if name not in self.users:
            user, _ = get_user_model().objects.get_or_create(username=name, defaults={"is_active": False})
            if user.is_active:
                raise ValidationError({"source": [f"{name!r} is a user who can log in; imported labels need a "
                                                  "source of their own (give another source)"]})
            if not Membership.objects.filter(project=self.project, user=user).exists():
                services.add_member(project=self.project, user=user, role=Role.LABELER)
            self.users[name] = user
        return self.users[name]

    def forget_users(self) -> None:
        self.users.clear()

    def report(self, *, fmt: str, records: int, left_out: Counter[str]) -> ImportReport:
        return ImportReport(
            format=fmt, source=self.source if fmt in DEFAULT_SOURCES else "", records=records,
            created={name: self.created[name] for name in ("prompts", "demonstrations", "rankings", "candidates")},
            duplicates={name: self.duplicates[name] for name in ("prompts", "demonstrations", "rankings")},
            rankings_by_k={str(k): n for k, n in sorted(self.by_k.items())},
            ties={"rankings": self.ties["rankings"], "pairs": self.ties["pairs"]},
            left_out=dict(sorted(left_out.items())),
        )
