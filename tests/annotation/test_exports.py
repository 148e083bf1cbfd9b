"""Training-ready exports (issue 11): rows per format, from a snapshot or the live labels.

alice, carol and lena label project A (lena only here, for a third ranking per task); adam administers it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.exceptions import ValidationError

from annotation import exporting, reviews, services
from annotation.agreement import consensus_ranking
from annotation.exporting import export_options
from annotation.loop.snapshots import create_snapshot
from annotation.models import (
    Candidate,
    Demonstration,
    Membership,
    Prompt,
    Ranking,
    ReviewStatus,
    Role,
    Round,
    Task,
    content_hash,
)
from tests.factories import best_first, demonstration_task, make_project, make_prompt, make_ranking_task, make_user
from training.data import VERSION


def rank(task: Task, labeler, ranks: list[int]) -> Ranking:
    """Submit ``ranks`` for the task's candidates in candidate-id order (the order of their responses)."""
    ids = sorted(task.task_candidates.values_list("candidate_id", flat=True))
    ranking, _ = services.submit_ranking(labeler=labeler, task=task, seconds_spent=1,
                                         entries=[{"candidate": c, "rank": r} for c, r in zip(ids, ranks, strict=True)])
    return ranking


def texts_of(task: Task) -> list[str]:
    return list(Candidate.objects.filter(task_links__task=task).order_by("id").values_list("text", flat=True))


def export(project, format: str, **options) -> list[dict]:
    return list(exporting.rows(project, export_options(project=project, format=format, **options)))


@pytest.fixture
def lena(users, project_a):
    user = make_user("lena")
    Membership.objects.create(project=project_a, user=user, role=Role.LABELER)
    return user


@pytest.fixture
def three_way(project_a):
    """Project A with three labelers per ranking task."""
    project_a.overlap = 3
    project_a.save()
    return project_a


@pytest.fixture
def labelled(project_a, users, settings, tmp_path):
    """Six ranked tasks (one with a tie, one all tied, one with an empty answer), six demonstrations (one a
    conversation), one ranking and one demonstration rejected by a reviewer."""
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    alice = users["alice"]
    for i, ranks in enumerate([[1, 2, 3, 4], [2, 1, 4, 3], [1, 2, 2, 3], [1, 1, 1, 1], [4, 3, 2, 1], [1, 3, 2, 4]]):
        task = make_ranking_task(project_a, f"rank prompt {i}")
        rank(task, alice, ranks)
    Candidate.objects.filter(pk=sorted(texts_ids(task))[1]).update(text=" ")  # an empty answer in the last
    for i in range(5):
        demo = demonstration_task(make_prompt(project_a, f"demo prompt {i}"))
        services.submit_demonstration(author=alice, task=demo, text=f"answer {i}", seconds_spent=3)
    chat = services.bulk_create_prompts(project=project_a, items=[{"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour"}]}]).created[0]
    services.submit_demonstration(author=alice, task=demonstration_task(chat), text="Blue.", seconds_spent=2)
    rejected = make_ranking_task(project_a, "a rejected ranking")
    Ranking.objects.filter(pk=rank(rejected, alice, [1, 2, 3, 4]).pk).update(review_status=ReviewStatus.REJECTED)
    Demonstration.objects.filter(prompt__text="demo prompt 0").update(review_status=ReviewStatus.REJECTED)
    return project_a


def texts_ids(task: Task) -> list[int]:
    return list(task.task_candidates.values_list("candidate_id", flat=True))


def snapshot_records(snapshot, *names: str) -> dict[str, dict]:
    records = {}
    for name in names:
        for line in (Path(snapshot.path) / name).read_text().splitlines():
            record = json.loads(line)
            records[record["id"]] = record
    return records


def payload_hash(payload) -> str:
    return content_hash("", payload) if isinstance(payload, list) else content_hash(payload, None)


# -- round trips ------------------------------------------------------------------------------------

def test_listwise_rows_from_a_snapshot_rebuild_its_ranking_files_byte_for_byte(labelled):
    """The snapshot's hash covers each file's SHA-256: rows exported from it give the same files back."""
    snapshot = create_snapshot(project=labelled)
    rows = export(labelled, "listwise", snapshot=snapshot.pk)
    assert [row["id"] for row in rows] == [f"ranking-{pk}" for pk in snapshot.ranking_ids]
    for name, in_split in (("rankings.jsonl", lambda s: s == "train"), ("rankings_eval.jsonl", lambda s: s != "train")):
        rebuilt = "".join(json.dumps({"version": VERSION, "id": row["id"], "prompt": row["prompt"], "responses":
                                      row["responses"], "ranks": row["ranks"]}, ensure_ascii=False, sort_keys=True)
                          + "\n" for row in rows if in_split(row["split"]))
        assert hashlib.sha256(rebuilt.encode()).hexdigest() == snapshot.files[name]["sha256"], name


def test_rows_from_a_snapshot_carry_the_content_hashes_of_its_prompts(labelled):
    snapshot = create_snapshot(project=labelled)
    demos = snapshot_records(snapshot, "sft.jsonl", "sft_eval.jsonl")
    sft = export(labelled, "sft-messages", snapshot=snapshot.pk)
    assert {row["id"] for row in sft} == set(demos) and len(sft) == 5
    for row in sft:
        record = demos[row["id"]]
        assert row["prompt_hash"] == payload_hash(record["prompt"])
        assert row["messages"][-1] == {"role": "assistant", "content": record["response"]}
    rankings = snapshot_records(snapshot, "rankings.jsonl", "rankings_eval.jsonl")
    for row in export(labelled, "listwise", snapshot=snapshot.pk):
        record = rankings[row["id"]]
        assert row["prompt_hash"] == payload_hash(record["prompt"])
        assert (row["responses"], row["ranks"]) == (record["responses"], record["ranks"])


@pytest.mark.parametrize("format", ["sft", "sft-messages", "trl-pairwise", "listwise"])
def test_a_snapshot_export_gives_the_same_labels_as_the_live_query(labelled, users, format):
    snapshot = create_snapshot(project=labelled)
    from_snapshot = export(labelled, format, snapshot=snapshot.pk)
    assert from_snapshot and from_snapshot == export(labelled, format)
    later = make_ranking_task(labelled, "a later prompt")
    rank(later, users["carol"], [2, 1, 3, 4])
    services.submit_demonstration(author=users["carol"], task=demonstration_task(make_prompt(labelled, "later demo")),
                                  text="later answer", seconds_spent=1)
    assert export(labelled, format, snapshot=snapshot.pk) == from_snapshot  # a snapshot's labels are fixed
    assert len(export(labelled, format)) > len(from_snapshot)


def test_the_per_labeler_export_of_a_snapshot_lacks_only_the_all_tie_rankings_snapshots_leave_out(labelled):
    snapshot = create_snapshot(project=labelled)
    live = export(labelled, "per-labeler")
    assert [row for row in live if row["prompt"] != "rank prompt 3"] == export(labelled, "per-labeler",
                                                                               snapshot=snapshot.pk)


# -- formats ----------------------------------------------------------------------------------------

def test_sft_rows_are_prompt_completion_or_the_conversation_with_an_assistant_turn(labelled):
    plain = {row["completion"]: row for row in export(labelled, "sft")}
    assert set(plain) == {"answer 1", "answer 2", "answer 3", "answer 4", "Blue."}
    assert plain["answer 1"]["prompt"] == "demo prompt 1" and plain["answer 1"]["labeler"] == "alice"
    chat = {row["messages"][-1]["content"]: row["messages"] for row in export(labelled, "sft-messages")}
    assert chat["answer 1"] == [{"role": "user", "content": "demo prompt 1"},
                                {"role": "assistant", "content": "answer 1"}]
    assert chat["Blue."] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                             {"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue."}]


def test_pairwise_margins_are_rank_gaps_and_ties_are_skipped_by_default(project_a, users):
    task = make_ranking_task(project_a, "one tie")
    ranking = rank(task, users["alice"], [1, 2, 2, 3])
    a, b, c, d = texts_of(task)
    rows = export(project_a, "trl-pairwise")
    assert [(r["chosen"], r["rejected"], r["margin"], r["tie"]) for r in rows] == [
        (a, b, 1.0, False), (a, c, 1.0, False), (a, d, 2.0, False), (b, d, 1.0, False), (c, d, 1.0, False)]
    assert {(r["id"], r["labeler"], r["prompt"]) for r in rows} == {(f"ranking-{ranking.pk}", "alice", "one tie")}
    assert export(project_a, "trl-pairwise", ties="skip") == rows


def test_ties_can_be_exported_in_both_orders_with_a_zero_margin_and_a_tie_flag(project_a, users):
    task = make_ranking_task(project_a, "one tie")
    rank(task, users["alice"], [1, 2, 2, 3])
    a, b, c, d = texts_of(task)
    rows = export(project_a, "trl-pairwise", ties="both")
    assert len(rows) == 7
    assert [(r["chosen"], r["rejected"], r["margin"]) for r in rows if r["tie"]] == [(b, c, 0.0), (c, b, 0.0)]
    for row in rows:
        assert row["margin"] == 0.0 if row["tie"] else row["margin"] >= 1.0


def test_consensus_gives_one_set_of_pairs_per_task_with_the_consensus_rank_gaps(three_way, users, lena):
    task = make_ranking_task(three_way, "three labelers")
    table = [[1, 2, 3, 4], [2, 1, 3, 4], [1, 3, 2, 4]]  # rank sums 4, 6, 8, 12: consensus 1, 2, 3, 4
    for labeler, ranks in zip([users["alice"], users["carol"], lena], table, strict=True):
        rank(task, labeler, ranks)
    a, b, c, d = texts_of(task)
    assert consensus_ranking(table)[0] == [1, 2, 3, 4]
    rows = export(three_way, "trl-pairwise", aggregate="consensus")
    assert [(r["chosen"], r["rejected"], r["margin"]) for r in rows] == [
        (a, b, 1.0), (a, c, 2.0), (a, d, 3.0), (b, c, 1.0), (b, d, 2.0), (c, d, 1.0)]
    assert {(r["id"], r["labeler"]) for r in rows} == {(f"task-{task.pk}", None)}
    by_labelers = export(three_way, "trl-pairwise")
    assert len(by_labelers) == 18 and {r["labeler"] for r in by_labelers} == {"alice", "carol", "lena"}


def test_a_tie_in_the_consensus_follows_the_ties_option(three_way, users):
    task = make_ranking_task(three_way, "two labelers disagree")
    rank(task, users["alice"], [1, 2, 3, 4])
    rank(task, users["carol"], [2, 1, 3, 4])  # rank sums 3, 3, 6, 8: consensus 1, 1, 2, 3
    a, b, c, d = texts_of(task)
    listwise = export(three_way, "listwise", aggregate="consensus")
    assert [(r["responses"], r["ranks"]) for r in listwise] == [([a, b, c, d], [1, 1, 2, 3])]
    assert len(export(three_way, "trl-pairwise", aggregate="consensus")) == 5
    both = export(three_way, "trl-pairwise", aggregate="consensus", ties="both")
    assert [(r["chosen"], r["rejected"]) for r in both if r["tie"]] == [(a, b), (b, a)]


def test_listwise_rows_follow_the_snapshot_rules(labelled):
    rows = {row["prompt"]: row for row in export(labelled, "listwise")}
    assert "rank prompt 3" not in rows  # all tied: nothing to learn
    assert rows["rank prompt 2"]["ranks"] == [1, 2, 2, 3]
    assert len(rows["rank prompt 5"]["responses"]) == 3  # the empty answer is left out, ranks made dense again
    assert rows["rank prompt 5"]["ranks"] == [1, 2, 3]
    assert "a rejected ranking" not in rows


def test_the_per_labeler_export_lists_each_labelers_raw_ranks_beside_the_consensus(three_way, users, lena):
    task = make_ranking_task(three_way, "raw ranks")
    mine = {"alice": [1, 2, 3, 4], "carol": [1, 1, 2, 3], "lena": [4, 3, 2, 1]}
    ids = {name: rank(task, lena if name == "lena" else users[name], ranks).pk for name, ranks in mine.items()}
    Candidate.objects.filter(pk=min(texts_ids(task))).update(text="")  # raw: empty answers stay
    [row] = export(three_way, "per-labeler")
    assert row["id"] == f"task-{task.pk}" and row["responses"] == texts_of(task) and row["responses"][0] == ""
    assert row["rankings"] == [{"labeler": name, "ranking_id": ids[name], "ranks": ranks, "review_status": "submitted"}
                               for name, ranks in mine.items()]
    expected, confidence = consensus_ranking(list(mine.values()))
    assert (row["consensus_ranks"], row["consensus_confidence"]) == (expected, confidence)
    Ranking.objects.filter(pk=ids["lena"]).update(review_status=ReviewStatus.REJECTED)
    [row] = export(three_way, "per-labeler")
    assert [r["labeler"] for r in row["rankings"]] == ["alice", "carol"]  # rejected: left out by default



def test_each_labelers_ranking_keeps_its_ranks_and_its_tasks_texts_across_chunks(three_way, users, lena, monkeypatch):
    """Three labelers rank three tasks, one labeler after the other, so a task's rankings are neither
    consecutive ids nor in one chunk of two: every row still has its own labeler's ranks and its task's prompt
    and texts, and the chunk size changes no export."""
    labelers = {"alice": users["alice"], "carol": users["carol"], "lena": lena}
    tasks = [make_ranking_task(three_way, f"shared prompt {i}") for i in range(3)]
    orders = [[1, 2, 3, 4], [4, 3, 2, 1], [2, 1, 4, 3]]
    submitted = {}
    for j, name in enumerate(labelers):
        for i, task in enumerate(tasks):
            ranks = orders[(i + j) % 3]
            submitted[f"ranking-{rank(task, labelers[name], ranks).pk}"] = (name, task, ranks)
    exports = [("listwise", {}), ("listwise", {"aggregate": "consensus"}), ("trl-pairwise", {}),
               ("trl-pairwise", {"aggregate": "consensus", "ties": "both"}), ("per-labeler", {})]
    whole = [export(three_way, format, **options) for format, options in exports]
    monkeypatch.setattr(exporting, "CHUNK", 2)
    assert [export(three_way, format, **options) for format, options in exports] == whole
    listwise, consensus = whole[0], whole[1]
    assert sorted(row["id"] for row in listwise) == sorted(submitted)
    for row in listwise:
        name, task, ranks = submitted[row["id"]]
        assert (row["labeler"], row["prompt"], row["responses"], row["ranks"]) == (
            name, task.prompt.text, texts_of(task), ranks)
    assert [row["id"] for row in consensus] == [f"task-{task.pk}" for task in tasks]
    for row, task in zip(consensus, tasks, strict=True):
        table = [ranks for _, of, ranks in submitted.values() if of == task]
        assert (row["prompt"], row["responses"]) == (task.prompt.text, texts_of(task))
        assert row["ranks"] == consensus_ranking(table)[0] == [2, 1, 4, 3]  # rank sums 7, 6, 9, 8

# -- filters ----------------------------------------------------------------------------------------

def test_rejected_labels_are_left_out_by_default_and_exported_only_when_asked_for(labelled):
    assert all(row["prompt"] != "a rejected ranking" for row in export(labelled, "listwise"))
    assert all(row["prompt"] != "demo prompt 0" for row in export(labelled, "sft"))
    [rejected] = export(labelled, "listwise", status="rejected")
    assert rejected["prompt"] == "a rejected ranking"
    assert [row["prompt"] for row in export(labelled, "sft", status="rejected")] == ["demo prompt 0"]


def test_filters_select_by_round_review_status_and_labeler(three_way, users):
    alice, carol = users["alice"], users["carol"]
    imported = make_ranking_task(three_way, "imported")  # no round: round 1's
    later = make_ranking_task(three_way, "round two")
    Task.objects.filter(pk=later.pk).update(round=Round.objects.create(project=three_way, number=2))
    first = {name: rank(imported, users[name], [1, 2, 3, 4]).pk for name in ("alice", "carol")}
    second = {name: rank(later, users[name], [4, 3, 2, 1]).pk for name in ("alice", "carol")}
    Ranking.objects.filter(pk=second["carol"]).update(review_status=ReviewStatus.ACCEPTED)

    def ids(**options):
        return {int(row["id"].split("-")[1]) for row in export(three_way, "listwise", **options)}

    assert ids(round=1) == set(first.values()) and ids(round=2) == set(second.values())
    assert ids(labeler="alice") == {first["alice"], second["alice"]}
    assert ids(status="accepted") == {second["carol"]}
    assert ids(round=2, labeler="carol", status="submitted") == set()
    demo = demonstration_task(imported.prompt)
    services.submit_demonstration(author=carol, task=demo, text="carol's answer", seconds_spent=1)
    services.submit_demonstration(author=alice, task=demo, text="alice's answer", seconds_spent=1)
    assert [row["completion"] for row in export(three_way, "sft", labeler="carol")] == ["carol's answer"]
    assert [row["completion"] for row in export(three_way, "sft", round=2)] == []


def test_bad_parameters_are_reported_per_field(labelled, users):
    other = create_snapshot(project=make_project("other"))
    cases = [
        ({"format": "csv"}, "format"),
        ({"format": "listwise", "ties": "both"}, "ties"),
        ({"format": "sft", "aggregate": "consensus"}, "aggregate"),
        ({"format": "listwise", "snapshot": other.pk}, "snapshot"),
        ({"format": "listwise", "snapshot": create_snapshot(project=labelled).pk, "labeler": "alice"}, "snapshot"),
        ({"format": "listwise", "round": 7}, "round"),
        ({"format": "listwise", "labeler": "nobody"}, "labeler"),
        ({"format": "listwise", "status": "lost"}, "status"),
    ]
    for options, field in cases:
        with pytest.raises(ValidationError) as caught:
            export_options(project=labelled, **options)
        assert list(caught.value.detail) == [field], options


def test_an_export_reads_rankings_in_bounded_chunks_not_one_query_per_label(labelled, monkeypatch):
    def queries(**options) -> int:
        with CaptureQueriesContext(connection) as captured:
            export(labelled, "trl-pairwise", **options)
        return len(captured)

    options = export_options(project=labelled, format="trl-pairwise")
    assert exporting.label_count(labelled, options) == 6
    assert queries() == 2  # the rankings, and the entries of their one chunk
    monkeypatch.setattr(exporting, "CHUNK", 2)
    assert queries() == 1 + 3
    progress = []
    list(exporting.rows(labelled, options, on_progress=progress.append))
    assert progress == [2, 2, 2]


def test_prompts_with_the_same_hash_keep_the_same_split_in_every_export(labelled):
    for row in export(labelled, "listwise") + export(labelled, "sft"):
        assert row["split"] == Prompt.objects.get(content_hash=row["prompt_hash"], project=labelled).split


def test_a_snapshot_export_gives_the_snapshots_revision_of_a_demonstration_a_reviewer_edited_since(
        project_a, users, settings, tmp_path):
    settings.ARTIFACT_ROOT = str(tmp_path)
    task = demonstration_task(make_prompt(project_a, "Explain tides."))
    demo, _ = services.submit_demonstration(author=users["alice"], task=task, text="The moon.", seconds_spent=1)
    snapshot = create_snapshot(project=project_a)
    reviews.edit_demonstration(reviewer=users["rita"], demonstration=demo, text="The moon's pull.", reason="fuller")
    options = exporting.export_options(project=project_a, format="sft", snapshot=snapshot.pk)
    assert [row["completion"] for row in exporting.rows(project_a, options)] == ["The moon."]
    live = exporting.export_options(project=project_a, format="sft")
    assert [row["completion"] for row in exporting.rows(project_a, live)] == ["The moon's pull."]


def test_live_exports_leave_gold_tasks_out(project_a, users):
    task = make_ranking_task(project_a, "a gold question")
    services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=1)
    options = exporting.export_options(project=project_a, format="listwise")
    assert len(list(exporting.rows(project_a, options))) == 1
    Task.objects.filter(pk=task.pk).update(is_gold=True)
    assert list(exporting.rows(project_a, options)) == []
