"""Immutable, content-hashed dataset snapshots in training/'s data contracts.

A training job never reads live tables: it reads a snapshot. A snapshot holds a project's usable labels
at one moment — demonstrations and rankings that a reviewer has not rejected — with each prompt in its
fixed split:

- ``sft.jsonl`` / ``sft_eval.jsonl``: demonstrations of train / validation prompts (SFT examples);
- ``rankings.jsonl`` / ``rankings_eval.jsonl``: rankings (k responses and their ranks);
- ``ppo_prompts.jsonl`` / ``ppo_eval_prompts.jsonl``: train / test prompts for PPO and its evaluation.

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

from training.data import VERSION

from ..models import DatasetSnapshot, Demonstration, Project, Prompt, Ranking, ReviewStatus, Split, TaskKind
from ..oracles import dense_ranks

FILES = ("sft.jsonl", "sft_eval.jsonl", "rankings.jsonl", "rankings_eval.jsonl", "ppo_prompts.jsonl",
         "ppo_eval_prompts.jsonl")


def prompt_payload(prompt: Prompt):
    return prompt.messages if prompt.messages else prompt.text


def _demonstrations(project: Project, ids: list[int] | None):
    rows = Demonstration.objects.filter(task__project=project).exclude(review_status=ReviewStatus.REJECTED)
    if ids is not None:
        rows = Demonstration.objects.filter(pk__in=ids)
    return rows.select_related("prompt").order_by("id")


def _rankings(project: Project, ids: list[int] | None):
    rows = (Ranking.objects.filter(task__project=project, task__kind=TaskKind.RANKING)
            .exclude(review_status=ReviewStatus.REJECTED))
    if ids is not None:
        rows = Ranking.objects.filter(pk__in=ids)
    return rows.select_related("task__prompt").prefetch_related("entries__candidate").order_by("id")


def build_records(project: Project, *, ranking_ids: list[int] | None = None,
                  demonstration_ids: list[int] | None = None) -> tuple[dict[str, list[dict]], list[int], list[int]]:
    """The snapshot's files as records, and the ids of the labels in them. With ids given, exactly those
    labels are exported (to rebuild an existing snapshot)."""
    files: dict[str, list[dict]] = {name: [] for name in FILES}
    demo_ids, rank_ids = [], []
    for demo in _demonstrations(project, demonstration_ids):
        name = "sft.jsonl" if demo.prompt.split == Split.TRAIN else "sft_eval.jsonl"
        files[name].append({"version": VERSION, "id": f"demonstration-{demo.pk}",
                            "prompt": prompt_payload(demo.prompt), "response": demo.text})
        demo_ids.append(demo.pk)
    for ranking in _rankings(project, ranking_ids):
        # An empty answer (a model can stop at once) is not a response the training contract accepts: the
        # ranking keeps its other responses.
        entries = sorted((e for e in ranking.entries.all() if e.candidate.text.strip()), key=lambda e: e.candidate_id)
        if len({e.rank for e in entries}) < 2:
            continue  # all ties (or fewer than two answers): no comparison to learn from
        name = "rankings.jsonl" if ranking.task.prompt.split == Split.TRAIN else "rankings_eval.jsonl"
        files[name].append({"version": VERSION, "id": f"ranking-{ranking.pk}",
                            "prompt": prompt_payload(ranking.task.prompt),
                            "responses": [e.candidate.text for e in entries],
                            # dense again once a response is left out (a lower rank is a higher score)
                            "ranks": dense_ranks([-e.rank for e in entries])})
        rank_ids.append(ranking.pk)
    for prompt in Prompt.objects.filter(project=project).exclude(split=Split.VALIDATION).order_by("id"):
        name = "ppo_prompts.jsonl" if prompt.split == Split.TRAIN else "ppo_eval_prompts.jsonl"
        files[name].append({"version": VERSION, "id": f"prompt-{prompt.pk}", "prompt": prompt_payload(prompt)})
    return files, rank_ids, demo_ids


def _encode(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")


def content_hash(encoded: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(encoded):
        digest.update(name.encode() + b"\0" + hashlib.sha256(encoded[name]).hexdigest().encode() + b"\n")
    return digest.hexdigest()


def snapshot_root(project: Project) -> Path:
    return Path(settings.ARTIFACT_ROOT) / "projects" / str(project.pk) / "snapshots"


def create_snapshot(*, project: Project, round=None) -> DatasetSnapshot:
    """Export the project's usable labels now. Returns the existing snapshot when nothing changed.

    Files are written to a temporary directory and renamed into place, so a snapshot directory is
    complete or absent, and never rewritten."""
    records, rank_ids, demo_ids = build_records(project)
    encoded = {name: _encode(rows) for name, rows in records.items()}
    digest = content_hash(encoded)
    existing = DatasetSnapshot.objects.filter(project=project, content_hash=digest).first()
    if existing is not None:
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
            return DatasetSnapshot.objects.create(project=project, round=round, content_hash=digest,
                                                  path=str(target), files=files, ranking_ids=rank_ids,
                                                  demonstration_ids=demo_ids)
    except IntegrityError:
        return DatasetSnapshot.objects.get(project=project, content_hash=digest)


def verify_snapshot(snapshot: DatasetSnapshot) -> bool:
    """Rebuild the snapshot from its label ids and check that both the hash and the stored files match.
    (Prompts added to the project since then change the PPO prompt files; the labels never change.)"""
    records, _, _ = build_records(snapshot.project, ranking_ids=snapshot.ranking_ids,
                                  demonstration_ids=snapshot.demonstration_ids)
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


def snapshot_file(snapshot: DatasetSnapshot, name: str) -> Path | None:
    """A file of the snapshot, or None for a name that is not one (no path tricks)."""
    return Path(snapshot.path) / name if name in FILES else None
