"""Training-ready exports of a project's labels: row generators per format, and JSONL.

An export reads either a snapshot's labels (its ``ranking_ids`` / ``demonstration_ids``, re-read from the
tables by id; labels in a snapshot are frozen, and a demonstration's text is the snapshot's revision even
if a reviewer edited it since) or a filtered live query (round, review status, labeler). Without a status
filter, rejected labels are left out, as they are from snapshots; gold tasks' labels are left out of
live exports, as they are from snapshots by default.

Formats (one row per …):

``sft``           demonstration: ``prompt`` (the prompt as text), ``completion``. TRL's prompt-completion.
``sft-messages``  demonstration: ``messages`` = the prompt's turns (a text prompt is one user turn) and
                  the demonstration as an assistant turn. TRL's conversational language modeling.
``trl-pairwise``  comparison: ``prompt``, ``chosen``, ``rejected``, ``margin``, ``tie``. What TRL's
                  ``RewardTrainer`` takes (explicit prompt, standard format); ``margin`` is the rank gap
                  (rejected's rank minus chosen's, a float as its collator wants), which its loss subtracts:
                  ``-logsigmoid(r_chosen - r_rejected - margin)``.
``listwise``      ranking (or task, for the consensus): ``prompt``, ``responses``, ``ranks`` (1 = best, ties
                  share a rank), the k-way form of the snapshot's ``rankings.jsonl``.
``per-labeler``   task: every candidate, each labeler's raw ranks as submitted (``rankings``), next to the
                  consensus (``consensus_ranks``, ``consensus_confidence``) — Open-Assistant#3389.

Every row also has ``id`` (``ranking-N``, ``demonstration-N`` or, for a consensus, ``task-N``), ``labeler``
(the username; null for a consensus), ``prompt_hash`` (``Prompt.content_hash``) and ``split`` (the prompt's
fixed split, ``split_for_hash`` of that hash: train, validation or test).

The training formats follow the snapshot's rules: an empty response is left out of its ranking and the
ranks are made dense again; a ranking (or consensus) with fewer than two distinct ranks has nothing to
teach and gives no listwise row. ``per-labeler`` is raw: every candidate and every ranking.

Ties (``trl-pairwise``): ``skip`` (default) emits no pair for two tied responses, as the snapshot's
``comparisons`` counts them; ``both`` emits the pair in both orders with ``margin`` 0 and ``tie`` true, so a
Bradley-Terry loss pulls the two rewards together (the sum of the two losses is smallest when they are equal).
``tie`` is false on every other row.

Aggregation (``trl-pairwise``, ``listwise``): ``labelers`` (default) gives each ranking's own rows;
``consensus`` gives one set of rows per task from the Borda consensus (``agreement.borda_ranking``, the ranks
of ``consensus_ranking``) over the task's selected rankings, with the consensus rank gap as the margin.

Memory stays flat: labels are read in id (or task, id) order through ``.iterator()``, with one bounded
query for the entries of each chunk of ``CHUNK`` rankings, and rows are yielded one at a time.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby, islice
from operator import attrgetter
from typing import Any, NamedTuple

import orjson
from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from rest_framework.exceptions import ValidationError

from .agreement import borda_ranking, consensus_ranking
from .models import (
    DatasetSnapshot,
    Demonstration,
    LabelRevision,
    Project,
    Ranking,
    RankingEntry,
    ReviewStatus,
    Round,
    TaskKind,
)
from .oracles import dense_ranks

FORMATS = ("sft", "sft-messages", "trl-pairwise", "listwise", "per-labeler")
SFT_FORMATS = ("sft", "sft-messages")
TIES = ("skip", "both")
AGGREGATES = ("labelers", "consensus")
# Rankings per chunk: the entries of a chunk come from one query, so memory holds one chunk at a time.
CHUNK = 900

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ExportOptions:
    format: str
    snapshot: DatasetSnapshot | None = None
    round: int | None = None
    status: str | None = None
    labeler: Any = None  # a user
    ties: str = "skip"
    aggregate: str = "labelers"


def export_options(*, project: Project, format: str, snapshot: int | None = None, round: int | None = None,
                   status: str | None = None, labeler: str | None = None, ties: str | None = None,
                   aggregate: str | None = None) -> ExportOptions:
    """Check an export's parameters against the project; raises ValidationError with a message per field.

    ``snapshot`` is a snapshot id of this project and excludes the live filters; ``labeler`` is a username;
    ``ties`` applies to trl-pairwise only and ``aggregate`` to trl-pairwise and listwise."""
    errors: dict[str, list[str]] = {}
    if format not in FORMATS:
        errors["format"] = [f"unknown format {format!r}; use one of {', '.join(FORMATS)}"]
    if ties is not None and ties not in TIES:
        errors["ties"] = [f"use one of {', '.join(TIES)}"]
    elif ties is not None and format != "trl-pairwise":
        errors["ties"] = ["applies to the trl-pairwise format only"]
    if aggregate is not None and aggregate not in AGGREGATES:
        errors["aggregate"] = [f"use one of {', '.join(AGGREGATES)}"]
    elif aggregate is not None and format not in ("trl-pairwise", "listwise"):
        errors["aggregate"] = ["applies to the trl-pairwise and listwise formats only"]
    if status is not None and status not in ReviewStatus.values:
        errors["status"] = [f"use one of {', '.join(ReviewStatus.values)}"]
    found_snapshot = user = None
    if snapshot is not None:
        found_snapshot = DatasetSnapshot.objects.filter(project=project, pk=snapshot).first()
        if found_snapshot is None:
            errors["snapshot"] = ["this project has no such snapshot"]
        elif any(value is not None for value in (round, status, labeler)):
            errors["snapshot"] = ["a snapshot's labels are fixed: round, status and labeler filter live exports only"]
    if round is not None and round != 1 and not Round.objects.filter(project=project, number=round).exists():
        errors["round"] = [f"this project has no round {round}"]
    if labeler is not None:
        user = get_user_model().objects.filter(username=labeler).first()
        if user is None:
            errors["labeler"] = [f"no user named {labeler!r}"]
    if errors:
        raise ValidationError(errors)
    return ExportOptions(format=format, snapshot=found_snapshot, round=round, status=status, labeler=user,
                         ties=ties or "skip", aggregate=aggregate or "labelers")


def rows(project: Project, options: ExportOptions, *, on_progress: Progress | None = None) -> Iterator[dict]:
    """The export's rows, one dict each, in a stable order (label id, or task id for a consensus).
    ``on_progress(n)`` is called after each chunk with the number of labels read."""
    progress = on_progress or (lambda n: None)
    if options.format in SFT_FORMATS:
        return _sft_rows(project, options, progress)
    by_task = options.format == "per-labeler" or options.aggregate == "consensus"
    labels = _rankings(project, options, by_task=by_task, progress=progress)
    if options.format == "per-labeler":
        return _per_labeler_rows(labels)
    if options.format == "listwise":
        return _listwise_rows(labels, consensus=by_task)
    return _pairwise_rows(labels, consensus=by_task, ties=options.ties)


def label_count(project: Project, options: ExportOptions) -> int:
    """How many labels ``rows`` reads (for a progress bar): ``on_progress`` adds up to this."""
    if options.format in SFT_FORMATS:
        return _demonstration_query(project, options).count()
    return _ranking_query(project, options).count()


# --------------------------------------------------------------------------------------------------
# Reading labels
# --------------------------------------------------------------------------------------------------

class PromptInfo(NamedTuple):
    text: str
    messages: list[dict] | None  # read for the SFT formats only
    hash: str
    split: str


class RankingLabel(NamedTuple):
    """One ranking: its task's candidates in candidate-id order, with this labeler's rank of each."""
    id: int
    task_id: int
    labeler: str
    review_status: str
    prompt: PromptInfo
    texts: list[str]
    ranks: list[int]


def _live_filters(queryset: QuerySet, options: ExportOptions, *, person: str, ids: list[int] | None) -> QuerySet:
    """The live filters, or for a snapshot the id range of its labels (``_in_sorted`` picks them out)."""
    if options.snapshot is not None:
        return queryset.filter(pk__gte=min(ids), pk__lte=max(ids)) if ids else queryset.none()
    queryset = queryset.exclude(task__is_gold=True)  # gold tasks measure labelers; snapshots leave them out too
    if options.status is None:
        queryset = queryset.exclude(review_status=ReviewStatus.REJECTED)
    else:
        queryset = queryset.filter(review_status=options.status)
    if options.round is not None:
        in_round = Q(task__round__number=options.round)
        if options.round == 1:
            in_round |= Q(task__round__isnull=True)  # round 1 holds the imported tasks (RoundManager)
        queryset = queryset.filter(in_round)
    if options.labeler is not None:
        queryset = queryset.filter(**{person: options.labeler})
    return queryset


def _in_sorted(ids: list[int]) -> Callable[[int], bool]:
    """Membership in a snapshot's id list without building a set of a million ints."""
    ordered = sorted(ids)

    def contains(value: int) -> bool:
        i = bisect_left(ordered, value)
        return i < len(ordered) and ordered[i] == value

    return contains


def _chunks(iterable: Iterable, size: int) -> Iterator[list]:
    iterator = iter(iterable)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _ranking_query(project: Project, options: ExportOptions) -> QuerySet:
    queryset = Ranking.objects.filter(task__project=project, task__kind=TaskKind.RANKING)
    ids = options.snapshot.ranking_ids if options.snapshot is not None else None
    return _live_filters(queryset, options, person="labeler", ids=ids)


def _rankings(project: Project, options: ExportOptions, *, by_task: bool, progress: Progress) -> Iterator[RankingLabel]:
    """Rankings in id order (or task, id), each with its entries. The rankings stream through one query; the
    entries of each chunk of them come from one more, which selects the chunk's rankings again by their id
    (or task id) range in a subquery, so that no query carries a list of ids."""
    selected = _in_sorted(options.snapshot.ranking_ids) if options.snapshot is not None else None
    rankings = _ranking_query(project, options)
    key = "task_id" if by_task else "id"
    ordered = rankings.order_by(*((key, "id") if by_task else ("id",))).values_list(
        "id", "task_id", "labeler__username", "review_status",
        "task__prompt__text", "task__prompt__content_hash", "task__prompt__split")
    for chunk in _chunks(ordered.iterator(chunk_size=CHUNK), CHUNK):
        low, high = (chunk[0][1], chunk[-1][1]) if by_task else (chunk[0][0], chunk[-1][0])
        in_chunk = rankings.filter(**{f"{key}__gte": low, f"{key}__lte": high}).values("id")
        entries = (RankingEntry.objects.filter(ranking_id__in=in_chunk).order_by("ranking_id", "candidate_id")
                   .values_list("ranking_id", "rank", "candidate__text"))
        found: dict[int, tuple[list[str], list[int]]] = {}
        current = None
        for ranking_id, rank, text in entries.iterator(chunk_size=CHUNK * 10):
            if ranking_id != current:
                current, texts, ranks = ranking_id, [], []
                found[ranking_id] = texts, ranks
            texts.append(text)
            ranks.append(rank)
        for ranking_id, task_id, labeler, status, text, digest, split in chunk:
            if ranking_id in found and (selected is None or selected(ranking_id)):
                yield RankingLabel(ranking_id, task_id, labeler, status, PromptInfo(text, None, digest, split),
                                   *found[ranking_id])
        progress(len(chunk))


def _demonstration_query(project: Project, options: ExportOptions) -> QuerySet:
    ids = options.snapshot.demonstration_ids if options.snapshot is not None else None
    return _live_filters(Demonstration.objects.filter(task__project=project), options, person="author", ids=ids)


def _demonstrations(project: Project, options: ExportOptions, progress: Progress) -> Iterator[tuple]:
    queryset = _demonstration_query(project, options).order_by("id").values_list(
        "id", "author__username", "text", "prompt__text", "prompt__messages", "prompt__content_hash", "prompt__split")
    selected = _in_sorted(options.snapshot.demonstration_ids) if options.snapshot is not None else None
    exported = (options.snapshot.label_revisions or {}).get("demonstration", {}) if options.snapshot else {}
    for chunk in _chunks(queryset.iterator(chunk_size=CHUNK), CHUNK):
        rows = [row for row in chunk if selected is None or selected(row[0])]
        if exported:  # the snapshot's revision of each text (a reviewer may have edited one since)
            wanted = {row[0]: int(exported[str(row[0])]) for row in rows if str(row[0]) in exported}
            texts = {demo: content["text"] for demo, number, content in LabelRevision.objects.filter(
                demonstration_id__in=list(wanted)).values_list("demonstration_id", "number", "content")
                if wanted.get(demo) == number}
            rows = [(row[0], row[1], texts.get(row[0], row[2]), *row[3:]) for row in rows]
        yield from rows
        progress(len(chunk))


# --------------------------------------------------------------------------------------------------
# Rows per format
# --------------------------------------------------------------------------------------------------

def _tail(label_id: str, labeler: str | None, prompt: PromptInfo) -> dict:
    return {"id": label_id, "labeler": labeler, "prompt_hash": prompt.hash, "split": prompt.split}


def conversation(prompt: PromptInfo) -> list[dict]:
    """The prompt as chat turns: its own, or its text as one user turn."""
    return list(prompt.messages) if prompt.messages else [{"role": "user", "content": prompt.text}]


def _sft_rows(project: Project, options: ExportOptions, progress: Progress) -> Iterator[dict]:
    as_messages = options.format == "sft-messages"
    for pk, author, completion, text, messages, digest, split in _demonstrations(project, options, progress):
        prompt = PromptInfo(text, messages, digest, split)
        if as_messages:
            row = {"messages": conversation(prompt) + [{"role": "assistant", "content": completion}]}
        else:
            row = {"prompt": text, "completion": completion}
        yield row | _tail(f"demonstration-{pk}", author, prompt)


def usable(texts: list[str], ranks: list[int]) -> tuple[list[str], list[int]]:
    """The snapshot's rule: empty responses are left out and the ranks made dense again (1 = best)."""
    if all(map(str.strip, texts)) and len(set(ranks)) == max(ranks, default=0):
        return texts, ranks  # nothing left out, and dense already: the common case, made fast
    kept = [(t, r) for t, r in zip(texts, ranks, strict=True) if t.strip()]
    return [t for t, _ in kept], dense_ranks([-r for _, r in kept])


def _consensus(group: list[RankingLabel], *, raw: bool) -> tuple[list[str], list[int], list[float] | None]:
    """Texts, consensus ranks and confidence over the group's rankings of one task. Every ranking of a task
    ranks the same candidates, in the same (candidate id) order. ``raw`` (per-labeler) keeps every candidate
    and gives the confidence; otherwise empty answers are left out and the confidence, which no training
    format shows and which took longer than the ranks, is None."""
    texts = group[0].texts
    keep = [i for i, text in enumerate(texts) if raw or text.strip()]
    if not keep:
        return [], [], []
    table = [[label.ranks[i] for i in keep] for label in group]
    ranks, confidence = consensus_ranking(table) if raw else (borda_ranking(table), None)
    return [texts[i] for i in keep], ranks, confidence


def _ranked_sets(labels: Iterator[RankingLabel], *, consensus: bool) -> Iterator[tuple[str, str | None, PromptInfo,
                                                                                          list[str], list[int]]]:
    """(id, labeler, prompt, texts, dense ranks) per ranking, or per task for the consensus."""
    if not consensus:
        for label in labels:
            texts, ranks = usable(label.texts, label.ranks)
            yield f"ranking-{label.id}", label.labeler, label.prompt, texts, ranks
        return
    for task_id, group in groupby(labels, key=attrgetter("task_id")):
        group = list(group)
        texts, ranks, _ = _consensus(group, raw=False)
        yield f"task-{task_id}", None, group[0].prompt, texts, ranks


def pairs(ranks: list[int], ties: str) -> Iterator[tuple[int, int, int, bool]]:
    """(chosen index, rejected index, rank gap, tie) for each pair of responses, in index order."""
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if ranks[i] < ranks[j]:
                yield i, j, ranks[j] - ranks[i], False
            elif ranks[j] < ranks[i]:
                yield j, i, ranks[i] - ranks[j], False
            elif ties == "both":
                yield i, j, 0, True
                yield j, i, 0, True


def _pairwise_rows(labels: Iterator[RankingLabel], *, consensus: bool, ties: str) -> Iterator[dict]:
    for label_id, labeler, (text, _, digest, split), texts, ranks in _ranked_sets(labels, consensus=consensus):
        for chosen, rejected, gap, tie in pairs(ranks, ties):
            yield {"prompt": text, "chosen": texts[chosen], "rejected": texts[rejected], "margin": float(gap),
                   "tie": tie, "id": label_id, "labeler": labeler, "prompt_hash": digest, "split": split}


def _listwise_rows(labels: Iterator[RankingLabel], *, consensus: bool) -> Iterator[dict]:
    for label_id, labeler, (text, _, digest, split), texts, ranks in _ranked_sets(labels, consensus=consensus):
        if len(set(ranks)) < 2:
            continue  # all ties (or fewer than two answers): no comparison to learn from
        yield {"prompt": text, "responses": texts, "ranks": ranks, "id": label_id, "labeler": labeler,
               "prompt_hash": digest, "split": split}


def _per_labeler_rows(labels: Iterator[RankingLabel]) -> Iterator[dict]:
    for task_id, group in groupby(labels, key=attrgetter("task_id")):
        group = list(group)
        texts, ranks, confidence = _consensus(group, raw=True)
        if not texts:
            continue
        prompt = group[0].prompt
        yield {"prompt": prompt.text, "responses": texts, "consensus_ranks": ranks,
               "consensus_confidence": confidence,
               "rankings": [{"labeler": label.labeler, "ranking_id": label.id, "ranks": label.ranks,
                             "review_status": label.review_status} for label in group]} \
            | _tail(f"task-{task_id}", None, prompt)


# --------------------------------------------------------------------------------------------------
# JSONL
# --------------------------------------------------------------------------------------------------

def jsonl_chunks(rows: Iterable[dict], *, rows_per_chunk: int = 500) -> Iterator[bytes]:
    """UTF-8 JSON lines, a few hundred rows per chunk (for a streaming response or a file). orjson encodes
    a row about ten times faster than the standard library's encoder, which was a third of an export's time."""
    for chunk in _chunks(rows, rows_per_chunk):
        yield b"\n".join(map(orjson.dumps, chunk)) + b"\n"


def write_jsonl(rows: Iterable[dict], out) -> int:
    """Write rows to ``out`` (a path) as JSON lines; returns the number of rows."""
    count = 0
    with open(out, "wb") as file:
        for chunk in jsonl_chunks(rows):
            file.write(chunk)
            count += chunk.count(b"\n")  # JSON escapes newlines inside strings: one per row
    return count
