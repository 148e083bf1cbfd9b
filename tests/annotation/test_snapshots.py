"""Dataset snapshots: immutable, content-hashed, reproducible and downloadable."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotation import services
from annotation.loop.snapshots import create_snapshot, verify_snapshot
from annotation.models import DatasetSnapshot, Task, TaskKind
from tests.factories import best_first, bulk_ranking_tasks, demonstration_task, make_prompt, make_ranking_task


@pytest.fixture
def labelled(project_a, users, settings, tmp_path):
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    for i in range(6):
        task = make_ranking_task(project_a, f"rank prompt {i}")
        services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=3)
        demo = demonstration_task(make_prompt(project_a, f"demo prompt {i}"))
        services.submit_demonstration(author=users["alice"], task=demo, text=f"answer {i}", seconds_spent=3)
    return project_a


def test_the_same_labels_give_the_same_snapshot(labelled):
    first = create_snapshot(project=labelled)
    again = create_snapshot(project=labelled)
    assert first.pk == again.pk and DatasetSnapshot.objects.count() == 1
    assert len(first.content_hash) == 64


def test_new_labels_make_a_new_snapshot_and_never_change_the_old_one(labelled, users):
    old = create_snapshot(project=labelled)
    files = {p.name: p.read_bytes() for p in Path(old.path).iterdir()}
    task = make_ranking_task(labelled, "a later prompt")
    services.submit_ranking(labeler=users["carol"], task=task, entries=best_first(task), seconds_spent=1)
    new = create_snapshot(project=labelled)
    assert new.content_hash != old.content_hash and Path(new.path) != Path(old.path)
    assert {p.name: p.read_bytes() for p in Path(old.path).iterdir()} == files
    assert verify_snapshot(old)  # still rebuilt exactly from its own label ids
    assert len(new.ranking_ids) == len(old.ranking_ids) + 1


def test_a_snapshot_is_rebuilt_exactly_from_its_label_ids(labelled):
    snapshot = create_snapshot(project=labelled)
    assert verify_snapshot(snapshot)


def test_snapshot_files_follow_the_training_contracts(labelled):
    from training.data import read_ppo_prompts, read_rankings, read_sft

    snapshot = create_snapshot(project=labelled)
    root = Path(snapshot.path)
    rankings = read_rankings(root / "rankings.jsonl") + read_rankings(root / "rankings_eval.jsonl") \
        if snapshot.files["rankings_eval.jsonl"]["records"] else read_rankings(root / "rankings.jsonl")
    assert len(rankings) == 6 and all(r.k == 4 and sorted(r.ranks) == [1, 2, 3, 4] for r in rankings)
    sft = read_sft(root / "sft.jsonl") if snapshot.files["sft.jsonl"]["records"] else []
    assert all(ex.response.startswith("answer") for ex in sft)
    assert read_ppo_prompts(root / "ppo_prompts.jsonl")
    assert sum(f["records"] for name, f in snapshot.files.items() if name.startswith("sft")) == 6


def test_rejected_labels_and_all_tie_rankings_are_left_out(labelled, users):
    from annotation.models import Ranking

    Ranking.objects.filter(pk=Ranking.objects.first().pk).update(review_status="rejected")
    task = make_ranking_task(labelled, "all ties")
    ids = task.task_candidates.values_list("candidate_id", flat=True)
    services.submit_ranking(labeler=users["alice"], task=task, seconds_spent=1,
                            entries=[{"candidate": c, "rank": 1} for c in ids])
    snapshot = create_snapshot(project=labelled)
    assert len(snapshot.ranking_ids) == 5


def test_snapshots_are_listed_and_downloadable_by_reviewers_only(labelled, client_for):
    snapshot = create_snapshot(project=labelled)
    listing = client_for("rita").get("/api/snapshots/").json()
    assert [row["content_hash"] for row in listing["results"]] == [snapshot.content_hash]
    response = client_for("rita").get(f"/api/snapshots/{snapshot.pk}/files/rankings.jsonl/")
    assert response.status_code == 200
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert lines and json.loads(lines[0])["version"] == 1
    assert client_for("alice").get(f"/api/snapshots/{snapshot.pk}/").status_code == 404
    assert client_for("bob").get(f"/api/snapshots/{snapshot.pk}/files/rankings.jsonl/").status_code == 404
    assert client_for("rita").get(f"/api/snapshots/{snapshot.pk}/files/secrets.jsonl/").status_code == 404


def test_an_empty_candidate_is_left_out_of_its_ranking_so_the_reward_model_can_train(labelled, users):
    """A model can answer with nothing at all (the tiny base did in the closed-loop benchmark); the
    training contract refuses empty responses, so the round's RM stage failed on the whole snapshot."""
    from annotation.models import Candidate
    from training.data import read_rankings

    task = make_ranking_task(labelled, "one empty answer")
    empty = task.task_candidates.order_by("candidate_id").first().candidate_id
    Candidate.objects.filter(pk=empty).update(text="  ")
    services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=1)
    snapshot = create_snapshot(project=labelled)
    assert len(snapshot.ranking_ids) == 7  # the ranking is kept, with its other three responses
    root = Path(snapshot.path)
    rankings = read_rankings(root / "rankings.jsonl")
    if snapshot.files["rankings_eval.jsonl"]["records"]:
        rankings += read_rankings(root / "rankings_eval.jsonl")
    assert sorted(r.k for r in rankings) == [3] + [4] * 6
    assert verify_snapshot(snapshot)


def test_a_project_with_hundreds_of_rankings_makes_a_snapshot(project_a, users, settings, tmp_path):
    # Regression: loading the rankings' candidates through a prefetch asked SQLite for one "id = ? OR ..."
    # term per candidate, and from about 1,000 candidates SQLite refused ("Expression tree is too large").
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    bulk_ranking_tasks(project_a, 300)
    for task in Task.objects.filter(project=project_a, kind=TaskKind.RANKING):
        services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=1)
    snapshot = create_snapshot(project=project_a)
    records = sum(snapshot.files[name]["records"] for name in ("rankings.jsonl", "rankings_eval.jsonl"))
    assert len(snapshot.ranking_ids) == records == 300
    assert verify_snapshot(snapshot)
