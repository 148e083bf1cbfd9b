"""Every write that spans rows, needs a transaction or has side effects.

Views, admin actions, management commands and Celery tasks all call these keyword-only functions,
so the rules (leases, validation, idempotency) live in one place.

Errors are raised as ``rest_framework.exceptions`` (ValidationError with field messages, Conflict)
so every caller reports them the same way.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypedDict

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, ProtectedError, Q
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.exceptions import ValidationError

from . import queue
from .errors import Conflict
from .models import (
    Candidate,
    Demonstration,
    LabelRevision,
    Membership,
    ModelVersion,
    Project,
    Prompt,
    Ranking,
    RankingEntry,
    Role,
    Round,
    Skip,
    Task,
    TaskCandidate,
    TaskKind,
    TaskSlot,
    TrainingJob,
    content_hash,
    render_messages,
    split_for_hash,
    validate_messages,
)
from .prepared import PreparedInsertTree

LABEL_FIELDS = ("fails_instruction", "hallucination", "inappropriate", "harmful")


class EntryInput(TypedDict, total=False):
    candidate: int
    rank: int
    fails_instruction: bool
    hallucination: bool
    inappropriate: bool
    harmful: bool
    quality: int | None


class CandidateInput(TypedDict, total=False):
    text: str
    origin: str


class PromptInput(TypedDict, total=False):
    text: str
    messages: list[dict]
    language: str
    tags: list[str]
    candidates: list[CandidateInput | str]


# --- Projects and members -------------------------------------------------------------------------


def add_member(*, project: Project, user, role: str = Role.LABELER) -> Membership:
    membership, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    return membership


def register_base(*, name: str, path: str | Path) -> ModelVersion:
    """Register a base model folder for the whole site, with the provenance written beside it
    (``PROVENANCE.json``, by ``python -m training import-base``). Registering the same folder again
    updates its name and provenance and returns the same row."""
    folder = Path(path).resolve()
    if not (folder / "config.json").is_file():
        raise ValidationError({"path": [f"{folder} is not a model folder (no config.json)"]})
    try:
        provenance = json.loads((folder / "PROVENANCE.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        provenance = {"source": "unknown: no PROVENANCE.json beside the model"}
    except (OSError, ValueError) as exc:
        raise ValidationError({"path": [f"PROVENANCE.json is unreadable: {exc}"]}) from None
    base, _ = ModelVersion.objects.update_or_create(
        project=None, artifact_path=str(folder),
        defaults={"stage": ModelVersion.Stage.BASE, "name": name, "provenance": provenance})
    return base


def check_base_for(project: Project | None, base: ModelVersion | None) -> None:
    """A project starts from a registered base or from one of its own base models."""
    own = project.pk if project is not None else None
    if base is not None and (base.stage != ModelVersion.Stage.BASE or base.project_id not in (None, own)):
        raise ValidationError({"base_model": ["choose a registered base model (GET /api/base-models/)"]})


@transaction.atomic
def create_project(*, name: str, admin=None, base: ModelVersion | None = None, prompts: Sequence[PromptInput] = (),
                   line_numbers: Sequence[int] | None = None, **settings) -> tuple[Project, BulkResult]:
    """A project with its settings, a base model to start round 1 from, its admin and its prompts (each
    with its tasks), all or nothing: a bad setting or prompt line creates nothing. No labels are made."""
    check_base_for(None, base)
    project = Project(name=name, base_model=base, **settings)
    try:
        project.full_clean()
    except DjangoValidationError as exc:
        raise ValidationError(exc.message_dict) from None
    project.save()
    if admin is not None:
        add_member(project=project, user=admin, role=Role.ADMIN)
    return project, bulk_create_prompts(project=project, items=prompts, line_numbers=line_numbers)


# --- Prompts, candidates and tasks ----------------------------------------------------------------


def _clean_prompt_content(item: PromptInput) -> tuple[str, list[dict] | None]:
    messages = item.get("messages")
    text = (item.get("text") or "").strip()
    if messages:
        try:
            validate_messages(messages)
        except DjangoValidationError as exc:
            raise ValidationError({"messages": exc.messages}) from None
        if messages[-1]["role"] != "user":
            raise ValidationError({"messages": ["the last turn must be the user's, whom the response answers"]})
        text = text or render_messages(messages)
    if not text:
        raise ValidationError({"text": ["give the prompt as text or as messages"]})
    return text, messages or None


def _clean_candidates(project: Project, raw: Sequence[CandidateInput | str] | None) -> list[CandidateInput]:
    if not raw:
        return []
    cleaned = [{"text": c} if isinstance(c, str) else dict(c) for c in raw]
    if len(cleaned) != project.k:
        raise ValidationError(
            {"candidates": [f"a ranking task in this project needs exactly k={project.k} candidates"]}
        )
    for c in cleaned:
        if not isinstance(c.get("text"), str):
            raise ValidationError({"candidates": ["each candidate needs a text"]})
        if c.get("origin", Candidate.Origin.IMPORTED) not in (Candidate.Origin.IMPORTED, Candidate.Origin.HUMAN):
            raise ValidationError({"candidates": ["imported candidates have origin 'imported' or 'human'"]})
    return cleaned


@dataclass(frozen=True)
class NewTask:
    """A task for ``create_tasks`` to make: its kind, the prompt and (ranking) candidates it shows, its
    overlap (the project's when not given), round and generate job, and the seed of its candidates' order
    (the task's id when not given)."""

    prompt: Prompt
    kind: str
    candidates: Sequence[Candidate] = ()
    round: Round | None = None
    overlap: int | None = None
    shuffle_seed: int | None = None
    source_job: TrainingJob | None = None


def _free_slots(task: Task, indexes: Iterable[int]) -> list[TaskSlot]:
    """Unsaved free slots of ``task``, carrying its project, kind and place in the queue (done count, open,
    gold: the ``TaskSlot.task_*`` copy that the ``slot_queue`` index orders by)."""
    return [TaskSlot(task=task, project_id=task.project_id, kind=task.kind, index=i, task_done_count=task.done_count,
                     task_open=task.status == Task.Status.OPEN, task_is_gold=task.is_gold) for i in indexes]


def create_tasks(specs: Sequence[NewTask]) -> list[Task]:
    """Tasks, each with ``overlap`` free slots; a ranking task shows its candidates in a shuffled, fixed
    order. One bulk insert per table (tasks, slots, candidate places) whatever the number of tasks."""
    tasks = Task.objects.bulk_create(
        Task(project=spec.prompt.project, kind=spec.kind, prompt=spec.prompt, round=spec.round,
             target_overlap=spec.overlap or spec.prompt.project.overlap, source_job=spec.source_job)
        for spec in specs
    )
    TaskSlot.objects.bulk_create(slot for task in tasks for slot in _free_slots(task, range(task.target_overlap)))
    places = []
    for spec, task in zip(specs, tasks, strict=True):
        order = list(spec.candidates)
        random.Random(spec.shuffle_seed if spec.shuffle_seed is not None else task.pk).shuffle(order)
        places += [TaskCandidate(task=task, candidate=c, position=i) for i, c in enumerate(order)]
    TaskCandidate.objects.bulk_create(places)
    return tasks


def create_task(*, prompt: Prompt, kind: str, candidates: Sequence[Candidate] = (), round=None,
                overlap: int | None = None, shuffle_seed: int | None = None, source_job=None) -> Task:
    """A task with ``overlap`` free slots; ranking candidates are shown in a shuffled, fixed order."""
    return create_tasks([NewTask(prompt=prompt, kind=kind, candidates=candidates, round=round, overlap=overlap,
                                 shuffle_seed=shuffle_seed, source_job=source_job)])[0]


@transaction.atomic
def create_ranking_tasks(*, source_job, round, proposals: Sequence[tuple[Prompt, list[Candidate]]]) -> int:
    """The generated candidates (unsaved, origin "model") and one ranking task per prompt that has the
    project's k of them, in ``round``; returns the number of tasks made.

    All or nothing, and keyed by ``source_job``: a job that already made its tasks (a redelivered message
    after its worker died) makes nothing new, and the (source_job, prompt) unique constraint makes a second
    batch impossible even for two deliveries at once."""
    if Task.objects.filter(source_job=source_job).exists():
        return 0
    kept = [(prompt, candidates) for prompt, candidates in proposals if len(candidates) >= prompt.project.k]
    for _, candidates in kept:
        for candidate in candidates:
            # Model output is untrusted text: PostgreSQL refuses NUL characters, so they are replaced.
            candidate.text = candidate.text.replace("\x00", "\ufffd")
    Candidate.objects.bulk_create(candidate for _, candidates in kept for candidate in candidates)
    create_tasks([NewTask(prompt=prompt, kind=TaskKind.RANKING, candidates=candidates, round=round,
                          shuffle_seed=source_job.pk * 100_003 + prompt.pk, source_job=source_job)
                  for prompt, candidates in kept])
    return len(kept)


@dataclass(frozen=True)
class _CleanPrompt:
    """A checked prompt item: its content, its content hash and its candidates."""

    text: str
    messages: list[dict] | None
    digest: str
    candidates: list[CandidateInput]
    language: str
    tags: list[str]


def _clean_prompt(project: Project, item: PromptInput) -> _CleanPrompt:
    text, messages = _clean_prompt_content(item)
    candidates = _clean_candidates(project, item.get("candidates"))
    return _CleanPrompt(text=text, messages=messages, digest=content_hash(text, messages), candidates=candidates,
                        language=item.get("language") or "en", tags=list(item.get("tags") or []))


def _insert_prompts(project: Project, items: Sequence[_CleanPrompt], *, source: str, author=None,
                    client_token: uuid.UUID | None = None) -> list[Prompt]:
    """New prompts with everything a prompt gets: its candidates, a demonstration task when the project
    collects demonstrations, and a ranking task of its candidates when it has them (each task with the
    project's overlap of free slots). One bulk insert per table whatever the number of prompts."""
    prompts = Prompt.objects.bulk_create(
        Prompt(project=project, text=item.text, messages=item.messages, source=source, author=author,
               language=item.language, tags=item.tags, client_token=client_token,
               content_hash=item.digest, split=split_for_hash(item.digest))
        for item in items
    )
    candidates = iter(Candidate.objects.bulk_create(
        Candidate(prompt=prompt, text=c["text"], origin=c.get("origin", Candidate.Origin.IMPORTED))
        for prompt, item in zip(prompts, items, strict=True) for c in item.candidates
    ))
    tasks = []
    for prompt, item in zip(prompts, items, strict=True):
        if project.demonstrations_enabled:
            tasks.append(NewTask(prompt=prompt, kind=TaskKind.DEMONSTRATION))
        if item.candidates:
            tasks.append(NewTask(prompt=prompt, kind=TaskKind.RANKING,
                                 candidates=[next(candidates) for _ in item.candidates]))
    create_tasks(tasks)
    return prompts


def _prompts_with_hashes(project: Project, digests: Iterable[str]) -> dict[str, Prompt]:
    return {p.content_hash: p for p in Prompt.objects.filter(project=project, content_hash__in=digests)}


def _prompt_with_hash(project: Project, digest: str) -> Prompt | None:
    return _prompts_with_hashes(project, [digest]).get(digest)


def _prompt_with_token(author, client_token: uuid.UUID) -> Prompt | None:
    return Prompt.objects.filter(author=author, client_token=client_token).first()


def _get_or_create_prompt(project: Project, item: _CleanPrompt, *, source: str, author=None,
                          client_token: uuid.UUID | None = None) -> tuple[Prompt, bool]:
    existing = _prompt_with_hash(project, item.digest)
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            (prompt,) = _insert_prompts(project, [item], source=source, author=author, client_token=client_token)
    except IntegrityError:
        # A concurrent request created the same prompt between the read above and this insert (the
        # unique index made this one wait for it): that prompt is the one, as if it had been found.
        existing = _prompt_with_hash(project, item.digest)
        if existing is None:
            raise
        return existing, False
    return prompt, True


def _create_prompt_with_tasks(*, project: Project, item: PromptInput, source: str, author=None,
                              client_token: uuid.UUID | None = None) -> tuple[Prompt, bool]:
    return _get_or_create_prompt(project, _clean_prompt(project, item), source=source, author=author,
                                 client_token=client_token)


def _get_or_create_chunk(project: Project, items: Sequence[_CleanPrompt], *, source: str,
                         author=None) -> list[tuple[Prompt, bool]]:
    """``get_or_create_prompts`` for one chunk: one query for the prompts already there, then one bulk insert
    per table for the new ones."""
    found = _prompts_with_hashes(project, {item.digest for item in items})
    new: dict[str, _CleanPrompt] = {}
    for item in items:
        if item.digest not in found:
            new.setdefault(item.digest, item)  # the first item with this content makes the prompt
    if new:
        try:
            with transaction.atomic():
                found.update((p.content_hash, p)
                             for p in _insert_prompts(project, list(new.values()), source=source, author=author))
        except IntegrityError:
            # A concurrent import created one of these prompts since the read above: one at a time, each
            # finds it.
            return [_get_or_create_prompt(project, item, source=source, author=author) for item in items]
    fresh = set(new)
    pairs = []
    for item in items:
        pairs.append((found[item.digest], item.digest in fresh))
        fresh.discard(item.digest)  # a repeat of an item earlier in the chunk finds its prompt
    return pairs


@dataclass
class BulkResult:
    created: list[Prompt]
    duplicates: list[Prompt]


BULK_CHUNK = 1000  # prompt items per round of bulk inserts: a few statements each, and bounded memory


@transaction.atomic
def get_or_create_prompts(*, project: Project, items: Sequence[PromptInput], source: str, author=None,
                          on_progress=None) -> list[tuple[Prompt, bool]]:
    """Each item's prompt, in order, and whether this call created it (with its tasks, see
    ``_insert_prompts``): a prompt whose content is already in the project, or that an earlier item of
    ``items`` created, is found, not made again. Written ``BULK_CHUNK`` items at a time with a few
    statements each whatever their number; ``on_progress(done, total)`` after each. All or nothing; a bad
    item raises its ValidationError, so check them first (``bulk_create_prompts`` does)."""
    pairs = []
    for start in range(0, len(items), BULK_CHUNK):
        chunk = [_clean_prompt(project, item) for item in items[start:start + BULK_CHUNK]]
        pairs += _get_or_create_chunk(project, chunk, source=source, author=author)
        if on_progress is not None:
            on_progress(start + len(chunk), len(items))
    return pairs


@transaction.atomic
def bulk_create_prompts(*, project: Project, items: Sequence[PromptInput], author=None,
                        source: str = Prompt.Source.IMPORTED, line_numbers: Sequence[int] | None = None,
                        on_progress=None) -> BulkResult:
    """Create prompts (and their demonstration / ranking tasks) all or nothing.

    Every item is checked before anything is written: errors name the item's index (or line, when
    ``line_numbers`` are given) and nothing is created. A prompt whose content already exists in the
    project, or repeats an earlier item, is reported as a duplicate, not created again, so a retried
    import creates nothing new. Written in chunks (``get_or_create_prompts``), ``on_progress(done, total)``
    after each.
    """
    errors = {}
    for i, item in enumerate(items):
        try:
            _clean_prompt(project, item)
        except ValidationError as exc:
            errors[str(line_numbers[i] if line_numbers is not None else i)] = exc.detail
    if errors:
        raise ValidationError({"lines" if line_numbers is not None else "items": errors})
    result = BulkResult(created=[], duplicates=[])
    for prompt, created in get_or_create_prompts(project=project, items=items, source=source, author=author,
                                                 on_progress=on_progress):
        (result.created if created else result.duplicates).append(prompt)
    return result


def delete_unlabeled(*, obj: Prompt | Project) -> None:
    """Delete a prompt or project with its tasks, unless labels exist for it: labels are never lost
    (demonstrations and rankings PROTECT what they label)."""
    try:
        with transaction.atomic():
            obj.delete()
    except ProtectedError:
        raise Conflict(f"This {obj._meta.verbose_name} has demonstrations or rankings and cannot be deleted.") from None


def write_prompt(*, author, project: Project, item: PromptInput, client_token: uuid.UUID) -> tuple[Prompt, bool]:
    """A labeler-written prompt. Idempotent on ``client_token``: a retried submit returns the first prompt."""
    if not project.prompt_writing_enabled:
        raise ValidationError({"project": ["prompt writing is not enabled in this project"]})
    try:
        with transaction.atomic():
            existing = _prompt_with_token(author, client_token)
            if existing is not None:
                return existing, False
            prompt, created = _create_prompt_with_tasks(
                project=project, item={k: v for k, v in item.items() if k != "candidates"},
                source=Prompt.Source.LABELER, author=author, client_token=client_token,
            )
    except IntegrityError:
        # The same submit, retried while the first was still in flight: the first one's prompt it is.
        existing = _prompt_with_token(author, client_token)
        if existing is None:
            raise
        return existing, False
    if not created:
        if prompt.author_id == author.pk and prompt.client_token == client_token:
            return prompt, False  # a concurrent retry of this very submit created it first
        raise ValidationError({"text": ["this prompt already exists in the project"]})
    return prompt, True


# --- The task queue -------------------------------------------------------------------------------


def _my_open_lease(*, user, project: Project, kind: str) -> TaskSlot | None:
    """The slot the user already holds; an expired lease still counts while nobody else has taken it."""
    return (
        TaskSlot.objects.filter(labeler=user, project=project, kind=kind, status=TaskSlot.Status.LEASED,
                                task__status=Task.Status.OPEN)
        .order_by("leased_at").first()
    )


def _lease(slot_id: int, *, user, project: Project, now) -> bool:
    """Conditional-UPDATE claim of a free or expired slot: true when this call, and no concurrent one, got it."""
    rows = TaskSlot.objects.filter(pk=slot_id).filter(
        Q(status=TaskSlot.Status.FREE) | Q(status=TaskSlot.Status.LEASED, lease_expires__lte=now))
    return rows.update(
        status=TaskSlot.Status.LEASED, labeler=user, leased_at=now, lease_expires=now + project.lease_duration
    ) == 1


@dataclass(frozen=True)
class Lease:
    task_id: int
    expires: datetime
    task: queue.TaskRow | None = None  # the task as read with the lease, when the claim read it


def gold_draw(*, project_id: int, user_id: int, served: int) -> float:
    """A number in [0, 1), fixed for (project, labeler, how many ranking tasks the labeler holds or did there),
    and unpredictable without the SECRET_KEY: an HMAC, so the gold pattern cannot be learnt from outside
    while a test (with a fixed key) can replay it exactly."""
    message = f"gold:{project_id}:{user_id}:{served}".encode()
    digest = hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).digest()
    return int.from_bytes(digest[:7], "big") / 2**56


def gold_turn(*, user, project: Project, served: int) -> bool:
    """Whether the labeler's next ranking task is a gold one, ``served`` being how many ranking slots of the
    project they hold or did: a draw below ``project.gold_rate``, so over many tasks the share of gold
    converges to the rate (each draw is independent of the others)."""
    return gold_draw(project_id=project.pk, user_id=user.pk, served=served) < project.gold_rate


def held_lease(*, user, project: Project, kind: str) -> Lease | None:
    """The task the user holds of ``kind``, read only: nothing is leased or renewed (pages call this on GET)."""
    slot = _my_open_lease(user=user, project=project, kind=kind)
    return Lease(task_id=slot.task_id, expires=slot.lease_expires) if slot else None


def next_task(*, user, project: Project, kind: str, max_attempts: int = 8) -> Lease | None:
    """Lease the next task of ``kind`` to ``user``, or return None when nothing is left.

    Asking again while holding a lease returns the same task (and renews the lease). The order: tasks
    nearest to completing their overlap first, then the oldest; an expired lease of someone else counts as
    a free slot of its task (``expire_leases`` also frees them every few minutes). A labeler never gets a
    task they hold, did or skipped. Locks the caller's user row on PostgreSQL, so one labeler's concurrent
    requests (double clicks, two tabs) serialise and get the same task, and takes the slot ``FOR UPDATE
    SKIP LOCKED``, so different labelers pass each other instead of queueing; SQLite's IMMEDIATE
    transactions serialise writers. Two statements on PostgreSQL (lock, then claim-and-read), two on SQLite
    (claim, read), whatever the size of the queue (``annotation.queue``).

    Gold ranking tasks (``annotation.gold``) are mixed in at ``project.gold_rate``: when ``gold_turn`` says
    so, a gold task the labeler never had takes the place of the ordinary one, through the same claim. Gold
    is only ever served in place of real work, so it never shows up alone in an otherwise empty queue.
    """
    if kind == TaskKind.PROMPT_WRITING or not project.kind_enabled(kind):
        raise ValidationError({"kind": [f"{kind} tasks are not enabled in this project"]})
    mixes_gold = kind == TaskKind.RANKING and project.gold_rate > 0
    for _ in range(max_attempts):
        now = timezone.now()
        expires = now + project.lease_duration
        try:
            with transaction.atomic():
                served = queue.lock_labeler(user_id=user.pk, project_id=project.pk, count_served=mixes_gold)
                gold = mixes_gold and gold_turn(user=user, project=project, served=served)
                claimed = queue.claim(user_id=user.pk, project_id=project.pk, kind=kind, now=now, expires=expires,
                                      gold=gold)
        except IntegrityError:
            # A concurrent request of the same labeler leased another slot of this task; the next
            # attempt finds that lease and returns it.
            continue
        if claimed is None:
            return None
        if claimed is not queue.LOST:
            return Lease(task_id=claimed.id, expires=expires, task=claimed)
        # Nothing got updated: the slot changed after it was picked (our expired lease was taken over, or
        # another labeler got there first). Ask again.
    raise Conflict("The queue is busy; please ask again.")


def _take_free_slot(*, user, task: Task, now) -> queue.LockedSlot:
    """A submission without a lease on the task (the lease expired and was taken over, an import, a script):
    lease any slot of the task that is still claimable, or refuse. Needs an open transaction."""
    claimable = TaskSlot.objects.claimable_by(user=user, project=task.project, kind=task.kind, now=now)
    for free in claimable.filter(task=task):
        if _lease(free.pk, user=user, project=task.project, now=now):
            return queue.lock_slot(task_id=task.pk, user_id=user.pk)
    if Skip.objects.filter(task=task, labeler=user).exists():
        raise Conflict("You skipped this task.")
    raise Conflict("Your lease on this task expired and its slots are taken.")


def _require_kind(task: Task, kind: str) -> None:
    if task.kind != kind:
        raise ValidationError({"task": [f"this is a {task.kind} task"]})
    if task.status == Task.Status.CANCELLED:
        raise Conflict("This task was cancelled.")


def shown_order(task: Task) -> list[int]:
    """The task's candidate ids in the order the ranking page shows them (its display positions)."""
    return list(TaskCandidate.objects.filter(task=task).order_by("position").values_list("candidate_id", flat=True))


def validate_ranking_entries(task: Task, entries: Sequence[EntryInput], order: list[int] | None = None
                             ) -> list[EntryInput]:
    """The ranks cover exactly the task's candidates, are 1..n and consecutive (ties share a rank).
    ``order``: the task's candidate ids, when the caller has them already (``shown_order``)."""
    expected = set(order if order is not None else shown_order(task))
    given = [e["candidate"] for e in entries]
    if len(given) != len(set(given)):
        raise ValidationError({"entries": ["each candidate may appear only once"]})
    if set(given) != expected:
        missing, extra = sorted(expected - set(given)), sorted(set(given) - expected)
        msg = "rank every candidate of the task exactly once"
        details = ([f"missing {missing}"] if missing else []) + ([f"not in this task {extra}"] if extra else [])
        raise ValidationError({"entries": [f"{msg}: {'; '.join(details)}"]})
    ranks = sorted({e["rank"] for e in entries})
    if ranks != list(range(1, len(ranks) + 1)):
        raise ValidationError({"entries": ["ranks must start at 1 and be consecutive; ties share a rank (1, 1, 2)"]})
    return list(entries)


def _ranking_differences(ranking: Ranking, entries: Sequence[EntryInput], comment: str) -> list[str]:
    """The fields in which a resubmission differs from the stored ranking (the time spent may differ: a
    retry is the same label)."""
    stored = {e.candidate_id: e for e in ranking.entries.all()}
    differ = set()
    for e in entries:
        row = stored[e["candidate"]]
        if row.rank != e["rank"]:
            differ.add("rank")
        if row.quality != e.get("quality"):
            differ.add("quality")
        differ.update(f for f in LABEL_FIELDS if getattr(row, f) != bool(e.get(f, False)))
    fields = sorted(f"entries.{name}" for name in differ)
    return fields + (["comment"] if ranking.comment != comment else [])


_INSERT_RANKING = PreparedInsertTree(Ranking, (RankingEntry, "ranking"), (LabelRevision, "ranking"))


def submit_ranking(*, labeler, task: Task, entries: Sequence[EntryInput], seconds_spent: float,
                   comment: str = "") -> tuple[Ranking, bool]:
    """Record a ranking; returns (ranking, created).

    Idempotent: a retry of the same ranking (double click, network retry) returns the first one with
    created=False; a second submission that differs in anything but the time spent (ranks, labels,
    quality, comment) is a Conflict naming the fields that differ. Locks the caller's
    slot row, so concurrent retries serialise on it, then the task row (``queue.finish_slot``).
    """
    _require_kind(task, TaskKind.RANKING)
    now = timezone.now()
    with transaction.atomic():
        # The caller's slot, locked, and the task's candidates in display order: one statement.
        slot = queue.lock_slot(task_id=task.pk, user_id=labeler.pk)
        order = slot.order if slot is not None else shown_order(task)
        entries = validate_ranking_entries(task, entries, order)
        if slot is None:
            slot = _take_free_slot(user=labeler, task=task, now=now)
        if slot.status == TaskSlot.Status.DONE:
            existing = Ranking.objects.select_related("task").prefetch_related("entries").get(slot_id=slot.id)
            differ = _ranking_differences(existing, entries, comment)
            if not differ:
                return existing, False
            raise Conflict(f"You already ranked this task differently ({', '.join(differ)}); "
                           "correct it from your history instead.")
        # The ranking, its entries and first revision without the ORM's save path, and on PostgreSQL the slot
        # and task finished, all in one statement (``PreparedInsertTree``); on SQLite one per table, then two.
        ranking = Ranking(task=task, slot_id=slot.id, labeler=labeler, comment=comment, seconds_spent=seconds_spent,
                          shown_order=order)
        rows = [RankingEntry(ranking=ranking, candidate_id=e["candidate"], rank=e["rank"], quality=e.get("quality"),
                             **{f: bool(e.get(f, False)) for f in LABEL_FIELDS}) for e in entries]
        revision = LabelRevision(ranking=ranking, number=1, content=ranking_content(comment, entries), author=labeler,
                                 seconds_spent=seconds_spent)
        finish = queue.finish_slot_ctes(slot_id=slot.id, task_id=task.pk)
        _INSERT_RANKING.insert(ranking, rows, [revision], also=finish)
        if finish is None:
            queue.finish_slot(slot_id=slot.id, task_id=task.pk)
    # The caller renders the ranking from memory rather than reading back what was just written.
    ranking._prefetched_objects_cache = {"entries": rows}
    return ranking, True


def submit_demonstration(*, author, task: Task, text: str, seconds_spent: float) -> tuple[Demonstration, bool]:
    """Record a demonstration; idempotent like ``submit_ranking`` (same text → the first one)."""
    _require_kind(task, TaskKind.DEMONSTRATION)
    if not text.strip():
        raise ValidationError({"text": ["a demonstration cannot be empty"]})
    now = timezone.now()
    with transaction.atomic():
        slot = queue.lock_slot(task_id=task.pk, user_id=author.pk) or _take_free_slot(user=author, task=task, now=now)
        if slot.status == TaskSlot.Status.DONE:
            existing = Demonstration.objects.get(slot_id=slot.id)
            if existing.text == text:
                return existing, False
            raise Conflict("You already wrote a demonstration for this task; correct it from your history instead.")
        demonstration = Demonstration.objects.create(
            task=task, slot_id=slot.id, prompt_id=task.prompt_id, author=author, text=text, seconds_spent=seconds_spent
        )
        LabelRevision.objects.create(demonstration=demonstration, number=1, content={"text": text}, author=author,
                                     seconds_spent=seconds_spent)
        queue.finish_slot(slot_id=slot.id, task_id=task.pk)
    return demonstration, True


def ranking_content(comment: str, entries: Sequence[EntryInput]) -> dict:
    """A ranking revision's content: the comment and each candidate's rank and labels, by candidate id."""
    return {"comment": comment, "entries": [
        {"candidate": e["candidate"], "rank": e["rank"], "quality": e.get("quality"),
         **{f: bool(e.get(f, False)) for f in LABEL_FIELDS}} for e in sorted(entries, key=lambda e: e["candidate"])]}


def _require_correctable(label: Ranking | Demonstration, what: str) -> None:
    reason = label.correction_refused()
    if reason:
        raise Conflict(f"This {what} can no longer be corrected: {reason}. Ask a reviewer for a change instead.")


def correct_ranking(*, labeler, ranking: Ranking, entries: Sequence[EntryInput], seconds_spent: float,
                    comment: str = "") -> Ranking:
    """Correct a ranking: a new revision (the old ones are kept) that becomes its current content. The
    ranking keeps its id and slot, so the task still counts it once; ``seconds_spent`` is added to the
    time already recorded. Refused once a reviewer decided on it, once it is in a training snapshot, or
    once its round closed (``Label.correction_refused``); the review status is never changed here."""
    if ranking.labeler_id != labeler.pk:
        raise Conflict("Only the labeler who submitted a ranking corrects it.")
    task = ranking.task
    entries = validate_ranking_entries(task, entries)
    with transaction.atomic():
        ranking = Ranking.objects.select_for_update(of=("self",)).select_related("task__round").get(pk=ranking.pk)
        _require_correctable(ranking, "ranking")
        number = ranking.revision + 1
        LabelRevision.objects.create(ranking=ranking, number=number, content=ranking_content(comment, entries),
                                     author=labeler, seconds_spent=seconds_spent)
        Ranking.objects.filter(pk=ranking.pk).update(
            comment=comment, seconds_spent=F("seconds_spent") + seconds_spent, updated=timezone.now(), revision=number)
        RankingEntry.objects.filter(ranking=ranking).delete()
        RankingEntry.objects.bulk_create(
            RankingEntry(ranking=ranking, candidate_id=e["candidate"], rank=e["rank"], quality=e.get("quality"),
                         **{f: bool(e.get(f, False)) for f in LABEL_FIELDS})
            for e in entries
        )
    return Ranking.objects.select_related("task").prefetch_related("entries").get(pk=ranking.pk)


def correct_demonstration(*, author, demonstration: Demonstration, text: str, seconds_spent: float) -> Demonstration:
    """Correct a demonstration: a new revision, kept with the old ones (same id, counted once); refused
    like ``correct_ranking``."""
    if demonstration.author_id != author.pk:
        raise Conflict("Only the author of a demonstration corrects it.")
    if not text.strip():
        raise ValidationError({"text": ["a demonstration cannot be empty"]})
    with transaction.atomic():
        demonstration = Demonstration.objects.select_for_update(of=("self",)).select_related("task__round").get(
            pk=demonstration.pk)
        _require_correctable(demonstration, "demonstration")
        number = demonstration.revision + 1
        LabelRevision.objects.create(demonstration=demonstration, number=number, content={"text": text},
                                     author=author, seconds_spent=seconds_spent)
        Demonstration.objects.filter(pk=demonstration.pk).update(
            text=text, seconds_spent=F("seconds_spent") + seconds_spent, updated=timezone.now(), revision=number)
    demonstration.refresh_from_db()
    return demonstration


def _free_slot(*, user, task: Task) -> None:
    TaskSlot.objects.filter(task=task, labeler=user, status=TaskSlot.Status.LEASED).release()


@transaction.atomic
def skip_task(*, labeler, task: Task, reason: str) -> tuple[Skip, bool]:
    """Record a skip with its reason and return the leased slot to the pool. A retried skip is a no-op."""
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": ["say why you skip this task"]})
    if Ranking.objects.filter(task=task, labeler=labeler).exists() or Demonstration.objects.filter(
        task=task, author=labeler
    ).exists():
        raise Conflict("You already submitted this task.")
    skip, created = Skip.objects.get_or_create(task=task, labeler=labeler, defaults={"reason": reason})
    _free_slot(user=labeler, task=task)
    return skip, created


@transaction.atomic
def undo_skip(*, labeler, task: Task) -> Lease | None:
    """Forget a skip and give the labeler the task back: their other lease of that kind in the project
    is released and a slot of this task leased to them. Returns that lease, or None if there was no skip
    or every slot was taken meanwhile (the skip is forgotten all the same). Locks the user row first, as
    ``next_task`` does, so that it never races the labeler's own next-task request."""
    queue.lock_labeler(user_id=labeler.pk, project_id=task.project_id)
    deleted, _ = Skip.objects.filter(task=task, labeler=labeler).delete()
    if not deleted:
        return None
    TaskSlot.objects.filter(labeler=labeler, project_id=task.project_id, kind=task.kind,
                            status=TaskSlot.Status.LEASED).release()
    now = timezone.now()
    claimable = TaskSlot.objects.claimable_by(user=labeler, project=task.project, kind=task.kind, now=now)
    for slot in claimable.filter(task=task):
        if _lease(slot.pk, user=labeler, project=task.project, now=now):
            return Lease(task_id=task.pk, expires=now + task.project.lease_duration)
    return None


@transaction.atomic
def release_task(*, labeler, task: Task) -> bool:
    """Give a leased slot back to the pool without recording a skip (for example when logging off)."""
    held = TaskSlot.objects.filter(task=task, labeler=labeler, status=TaskSlot.Status.LEASED).exists()
    if not held:
        raise Conflict("You hold no lease on this task.")
    _free_slot(user=labeler, task=task)
    return True


def expire_leases(*, now=None) -> int:
    """Housekeeping: mark expired leases free. The queue already treats them as free; this keeps the
    table tidy and the admin's numbers true."""
    now = now or timezone.now()
    return TaskSlot.objects.filter(status=TaskSlot.Status.LEASED, lease_expires__lte=now).release()


def purge_expired_tokens(*, now=None) -> int:
    """Housekeeping: delete expired API tokens (authentication refuses them already)."""
    return AuthToken.objects.filter(expiry__lt=now or timezone.now()).delete()[0]
