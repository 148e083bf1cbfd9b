"""Immutable, content-hashed dataset snapshots in training/'s data contracts.

A training job never reads live tables: it reads a snapshot. A snapshot holds a project's usable labels
at one moment — demonstrations and rankings that a reviewer has not rejected — with each prompt in its
fixed split:

- ``sft.jsonl`` / ``sft_eval.jsonl``: demonstrations of train / validation prompts (SFT examples);
- ``rankings.jsonl`` / ``rankings_eval.jsonl``: rankings (k responses and their ranks);
- ``ppo_prompts.jsonl`` / ``ppo_eval_prompts.jsonl``: train / test prompts for PPO and its evaluation.

Rankings of gold tasks (``annotation.gold``: known answers, there to measure labelers) are left out unless
``include_gold`` asks for them.

Records are ordered by id and the hash covers every file's name and bytes, so the same labels always give
the same hash; the label ids are stored with the snapshot, which can therefore be rebuilt and checked.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Prefetch

from training.data import VERSION, best_ranked, parse_ranking

from ..models import (
    DatasetSnapshot,
    Demonstration,
    LabelRevision,
    Project,
    Prompt,
    Ranking,
    RankingEntry,
    ReviewStatus,
    Round,
    Split,
    TaskKind,
)
from ..oracles import dense_ranks

FILES = ("sft.jsonl", "sft_eval.jsonl", "rankings.jsonl", "rankings_eval.jsonl", "ppo_prompts.jsonl",
         "ppo_eval_prompts.jsonl")


def prompt_payload(prompt: Prompt):
    return prompt.messages if prompt.messages else prompt.text


PREFETCH_CHUNK = 1000  # rankings whose entries are read by one query


def _demonstrations(project: Project, ids: list[int] | None):
    rows = Demonstration.objects.filter(task__project=project).exclude(review_status=ReviewStatus.REJECTED)
    if ids is not None:
        rows = Demonstration.objects.filter(pk__in=ids)
    return rows.select_related("prompt").order_by("id")


def _rankings(project: Project, ids: list[int] | None, include_gold: bool = False):
    rows = (Ranking.objects.filter(task__project=project, task__kind=TaskKind.RANKING)
            .exclude(review_status=ReviewStatus.REJECTED))
    if not include_gold:
        rows = rows.exclude(task__is_gold=True)
    if ids is not None:
        rows = Ranking.objects.filter(pk__in=ids)
    # The entries come with their candidates by a join, and are fetched PREFETCH_CHUNK rankings at a time
    # (``iterator``): a prefetch of ``entries__candidate`` over a whole project made SQLite refuse the query
    # (Django 5.2 asks for the candidates as one ``id = … OR id = …`` per candidate: "Expression tree is
    # too large" from about 1,000 rankings), and one IN list of every ranking would outgrow SQLite's
    # variable limit on a large project.
    entries = Prefetch("entries", queryset=RankingEntry.objects.select_related("candidate"))
    return rows.select_related("task__prompt").prefetch_related(entries).order_by("id").iterator(PREFETCH_CHUNK)


def _revision_contents(field: str, numbers: dict[int, int]) -> dict[int, dict]:
    """label id → the content of its revision ``numbers[id]`` (``field`` is "ranking" or "demonstration")."""
    wanted, contents = set(numbers.items()), {}
    ids = list(numbers)
    for start in range(0, len(ids), 1000):
        rows = LabelRevision.objects.filter(**{f"{field}_id__in": ids[start:start + 1000]}).values_list(
            f"{field}_id", "number", "content")
        contents.update({label: content for label, number, content in rows if (label, number) in wanted})
    return contents


def build_records(project: Project, *, ranking_ids: list[int] | None = None,
                  demonstration_ids: list[int] | None = None, revisions: dict | None = None,
                  include_gold: bool = False) -> tuple[dict[str, list[dict]], list[int], list[int], dict]:
    """The snapshot's files as records, the ids of the labels in them, and the revision of each
    (``{"ranking": {id: n}, "demonstration": {id: n}}``). A label's content is read from its revision
    (``LabelRevision``), never from the live row, so a snapshot names exactly what it exported. With ids
    and ``revisions`` given, exactly those revisions of those labels are exported (to rebuild a snapshot).
    Rankings of gold tasks are left out unless ``include_gold`` (ids given: exactly those, gold or not)."""
    files: dict[str, list[dict]] = {name: [] for name in FILES}
    demo_ids, rank_ids = [], []
    demos = list(_demonstrations(project, demonstration_ids))
    rankings = list(_rankings(project, ranking_ids, include_gold))
    chosen = revisions or {}
    demo_numbers = {d.pk: int(chosen.get("demonstration", {}).get(str(d.pk), d.revision)) for d in demos}
    rank_numbers = {r.pk: int(chosen.get("ranking", {}).get(str(r.pk), r.revision)) for r in rankings}
    demo_texts = _revision_contents("demonstration", demo_numbers)
    rank_contents = _revision_contents("ranking", rank_numbers)
    for demo in demos:
        name = "sft.jsonl" if demo.prompt.split == Split.TRAIN else "sft_eval.jsonl"
        text = demo_texts[demo.pk]["text"] if demo.pk in demo_texts else demo.text  # (labels older than revisions)
        files[name].append({"version": VERSION, "id": f"demonstration-{demo.pk}",
                            "prompt": prompt_payload(demo.prompt), "response": text})
        demo_ids.append(demo.pk)
    for ranking in rankings:
        candidates = {e.candidate_id: e.candidate for e in ranking.entries.all()}
        content = rank_contents.get(ranking.pk)
        ranks = ({e["candidate"]: e["rank"] for e in content["entries"]} if content is not None
                 else {e.candidate_id: e.rank for e in ranking.entries.all()})
        # An empty answer (a model can stop at once) is not a response the training contract accepts: the
        # ranking keeps its other responses.
        kept = sorted(c for c in ranks if candidates[c].text.strip())
        if len({ranks[c] for c in kept}) < 2:
            continue  # all ties (or fewer than two answers): no comparison to learn from
        name = "rankings.jsonl" if ranking.task.prompt.split == Split.TRAIN else "rankings_eval.jsonl"
        files[name].append({"version": VERSION, "id": f"ranking-{ranking.pk}",
                            "prompt": prompt_payload(ranking.task.prompt),
                            "responses": [candidates[c].text for c in kept],
                            # dense again once a response is left out (a lower rank is a higher score)
                            "ranks": dense_ranks([-ranks[c] for c in kept])})
        rank_ids.append(ranking.pk)
    for prompt in Prompt.objects.filter(project=project).exclude(split=Split.VALIDATION).order_by("id"):
        name = "ppo_prompts.jsonl" if prompt.split == Split.TRAIN else "ppo_eval_prompts.jsonl"
        files[name].append({"version": VERSION, "id": f"prompt-{prompt.pk}", "prompt": prompt_payload(prompt)})
    exported = {"ranking": {str(i): rank_numbers[i] for i in rank_ids},
                "demonstration": {str(i): demo_numbers[i] for i in demo_ids}}
    return files, rank_ids, demo_ids, exported


def _encode(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")


def content_hash(encoded: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(encoded):
        digest.update(name.encode() + b"\0" + hashlib.sha256(encoded[name]).hexdigest().encode() + b"\n")
    return digest.hexdigest()


def snapshot_root(project: Project) -> Path:
    return Path(settings.ARTIFACT_ROOT) / "projects" / str(project.pk) / "snapshots"


def create_snapshot(*, project: Project, round=None, include_gold: bool = False) -> DatasetSnapshot:
    """Export the project's usable labels now. Returns the existing snapshot when nothing changed.
    Gold tasks' rankings are left out unless ``include_gold``.

    Files are written to a temporary directory and renamed into place, so a snapshot directory is
    complete or absent, and never rewritten."""
    records, rank_ids, demo_ids, exported = build_records(project, include_gold=include_gold)
    encoded = {name: _encode(rows) for name, rows in records.items()}
    digest = content_hash(encoded)
    existing = DatasetSnapshot.objects.filter(project=project, content_hash=digest).first()
    if existing is not None:
        freeze(existing)
        return existing
    target = snapshot_root(project) / digest
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
        for name, data in encoded.items():
            (staging / name).write_bytes(data)
        try:
            os.rename(staging, target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # a concurrent export of the same content won
    files = {name: {"records": len(records[name]), "sha256": hashlib.sha256(data).hexdigest()}
             for name, data in encoded.items()}
    try:
        with transaction.atomic():
            snapshot = DatasetSnapshot.objects.create(project=project, round=round, content_hash=digest,
                                                      path=str(target), files=files, ranking_ids=rank_ids,
                                                      demonstration_ids=demo_ids, label_revisions=exported)
    except IntegrityError:
        snapshot = DatasetSnapshot.objects.get(project=project, content_hash=digest)
    freeze(snapshot)
    return snapshot


def freeze(snapshot: DatasetSnapshot) -> None:
    """Labels in a snapshot can no longer be corrected (``Label.correction_refused``): a model may be
    trained on them, and its lineage names them."""
    for ids, model in ((snapshot.ranking_ids, Ranking), (snapshot.demonstration_ids, Demonstration)):
        for start in range(0, len(ids), 1000):
            model.objects.filter(pk__in=ids[start:start + 1000], in_snapshot=False).update(in_snapshot=True)


def verify_snapshot(snapshot: DatasetSnapshot) -> bool:
    """Rebuild the snapshot from its labels' exported revisions and check that both the hash and the stored
    files match.
    (Prompts added to the project since then change the PPO prompt files; the labels never change.)"""
    records, _, _, _ = build_records(snapshot.project, ranking_ids=snapshot.ranking_ids,
                                     demonstration_ids=snapshot.demonstration_ids,
                                     revisions=snapshot.label_revisions)
    rebuilt = {name: _encode(rows) for name, rows in records.items() if not name.startswith("ppo_")}
    on_disk = {name: (Path(snapshot.path) / name).read_bytes() for name in FILES}
    labels_match = all(rebuilt[name] == on_disk[name] for name in rebuilt)
    return labels_match and content_hash(on_disk) == snapshot.content_hash


def comparisons(ranks: list[int]) -> int:
    """The pairwise comparisons a ranking holds: pairs of responses with different ranks (ties compare
    nothing)."""
    return sum(1 for i, a in enumerate(ranks) for b in ranks[i + 1:] if a != b)


def count_comparisons(snapshot: DatasetSnapshot, name: str = "rankings.jsonl") -> int:
    """The comparisons in one of the snapshot's ranking files: the reward model's training data
    (``rankings.jsonl``) or its held-out set (``rankings_eval.jsonl``)."""
    path = Path(snapshot.path) / name
    if not path.exists():
        return 0
    with path.open(encoding="utf-8") as lines:
        return sum(comparisons(json.loads(line)["ranks"]) for line in lines if line.strip())


def earlier_snapshots(project: Project, round: Round) -> list[int]:
    """The snapshots of the project's rounds before ``round``: the labels its earlier SFT models could have
    trained on. (A snapshot of an earlier run of ``round`` itself is not one of them.)"""
    return list(DatasetSnapshot.objects.filter(project=project, round__number__lt=round.number)
                .order_by("id").values_list("id", flat=True))


def new_sft_records(snapshot: DatasetSnapshot, exclude: list[int]) -> tuple[list[dict], list[dict]]:
    """The records of the snapshot's ``sft.jsonl`` (demonstrations) and ``rankings.jsonl`` that none of the
    snapshots ``exclude`` (their ids) held: what a round's SFT with ``data: "new"`` trains on. Labels are
    matched by the ids each snapshot recorded, so a corrected label counts as held."""
    held_demos, held_rankings = set(), set()
    for demo_ids, ranking_ids in DatasetSnapshot.objects.filter(pk__in=exclude).values_list(
            "demonstration_ids", "ranking_ids"):
        held_demos.update(f"demonstration-{i}" for i in demo_ids)
        held_rankings.update(f"ranking-{i}" for i in ranking_ids)
    return ([r for r in _records(snapshot, "sft.jsonl") if r["id"] not in held_demos],
            [r for r in _records(snapshot, "rankings.jsonl") if r["id"] not in held_rankings])


def count_best_ranked(rankings: list[dict]) -> int:
    """How many of these ranking records give SFT a best-ranked example (``training.data.best_ranked``)."""
    return len(best_ranked(parse_ranking(r) for r in rankings))


def _records(snapshot: DatasetSnapshot, name: str) -> list[dict]:
    path = Path(snapshot.path) / name
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def snapshot_file(snapshot: DatasetSnapshot, name: str) -> Path | None:
    """A file of the snapshot, or None for a name that is not one (no path tricks)."""
    return Path(snapshot.path) / name if name in FILES else None
