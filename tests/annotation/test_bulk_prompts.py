"""The bulk path for prompts (issue 13): ``services.bulk_create_prompts`` checks every item first, then writes
chunks with a few statements each whatever their size, reports repeats (in the project or in the batch) as
duplicates, and gives each prompt exactly the rows the single-prompt path gives it."""
from __future__ import annotations

import json
import random
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.exceptions import ValidationError

from annotation import services
from annotation.imports.importer import import_file
from annotation.models import Candidate, Prompt, Task, TaskKind, TaskSlot
from tests.factories import make_project

STATEMENT = re.compile(r'(\w+)\b.*?\b(?:INTO|FROM) "(\w+)"', re.S)


def statements(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]


def rounds(queries) -> list[str]:
    """Each statement as (verb, table); consecutive inserts into one table count once (a bulk insert that
    the engine's parameter limit split into batches: SQLite's 999 in Django)."""
    out: list[str] = []
    for sql in statements(queries):
        verb, table = STATEMENT.match(sql).groups()
        if not (out and verb == "INSERT" and out[-1] == f"{verb} {table}"):
            out.append(f"{verb} {table}")
    return out


def items(n: int, tag: str = "") -> list[dict]:
    return [{"text": f"{tag}question {i}?", "candidates": [f"answer {j} to {i}" for j in range(4)]} for i in range(n)]


ONE_CHUNK = ["SELECT annotation_prompt",  # the chunk's content hashes already in the project
             "INSERT annotation_prompt", "INSERT annotation_candidate", "INSERT annotation_task",
             "INSERT annotation_taskslot", "INSERT annotation_taskcandidate"]


def seed_and_count(n: int) -> CaptureQueriesContext:
    project = make_project(overlap=2)  # demonstrations and rankings: two tasks a prompt, two slots a task
    services.bulk_create_prompts(project=project, items=items(3, "old "))
    with CaptureQueriesContext(connection) as queries:
        result = services.bulk_create_prompts(project=project, items=items(3, "old ") + items(n))
    assert (len(result.created), len(result.duplicates)) == (n, 3)
    assert TaskSlot.objects.filter(project=project).count() == (n + 3) * 2 * 2
    return queries


def test_a_bulk_import_runs_the_same_statements_for_10_items_as_for_200(db):
    small, large = seed_and_count(10), seed_and_count(200)
    assert rounds(small) == rounds(large) == ONE_CHUNK
    if connection.vendor == "postgresql":
        assert len(statements(large)) == len(statements(small)) == len(ONE_CHUNK)
    else:  # only the parameter limit's batches grow, far from the ten statements a prompt of the single path
        assert len(statements(large)) < 200 // 5


def test_bulk_inserts_return_the_new_ids_on_both_engines(db):
    """What the bulk path relies on: a bulk insert gives back each row's id (PostgreSQL; SQLite 3.35+)."""
    assert connection.features.can_return_rows_from_bulk_insert
    made = services.bulk_create_prompts(project=make_project(), items=items(3)).created
    assert all(p.pk for p in made) and sorted(Prompt.objects.values_list("pk", flat=True)) == [p.pk for p in made]


def test_a_large_import_is_written_in_chunks_with_progress_after_each(db, monkeypatch):
    monkeypatch.setattr(services, "BULK_CHUNK", 100)
    project = make_project()
    calls = []
    with CaptureQueriesContext(connection) as queries:
        result = services.bulk_create_prompts(project=project, items=items(250),
                                              on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(100, 250), (200, 250), (250, 250)]
    assert rounds(queries) == ONE_CHUNK * 3
    assert [p.text for p in result.created] == [f"question {i}?" for i in range(250)]
    assert Task.objects.filter(project=project).count() == 500


def test_a_repeat_within_one_file_is_one_duplicate_of_the_first(db, monkeypatch):
    monkeypatch.setattr(services, "BULK_CHUNK", 2)  # the third repeat is in a later chunk than the first
    project = make_project()
    batch = [{"text": "Same?", "tags": ["first"]}, {"text": "Other?"}, {"text": "  Same?  ", "tags": ["second"]},
             {"text": "Third?"}, {"text": "Same?", "candidates": ["a", "b", "c", "d"]}]
    result = services.bulk_create_prompts(project=project, items=batch)
    first = result.created[0]
    assert [p.text for p in result.created] == ["Same?", "Other?", "Third?"]
    assert [p.pk for p in result.duplicates] == [first.pk, first.pk]
    assert Prompt.objects.filter(project=project).count() == 3
    assert first.tags == ["first"] and not Candidate.objects.exists()  # the first item's content, not a repeat's
    assert list(first.tasks.values_list("kind", flat=True)) == [TaskKind.DEMONSTRATION]
    again = services.bulk_create_prompts(project=project, items=batch)
    assert again.created == [] and len(again.duplicates) == 5 and Prompt.objects.count() == 3


def test_every_item_is_checked_before_anything_is_written(db):
    project = make_project()
    batch = items(50) + [{"text": " "}] + items(10, "more ") + [{"text": "k", "candidates": ["a"]}]
    with CaptureQueriesContext(connection) as queries, pytest.raises(ValidationError) as error:
        services.bulk_create_prompts(project=project, items=batch, line_numbers=range(3, 3 + len(batch)))
    assert error.value.detail == {"lines": {
        "53": {"text": ["give the prompt as text or as messages"]},
        "64": {"candidates": ["a ranking task in this project needs exactly k=4 candidates"]}}}
    assert not [sql for sql in statements(queries) if sql.startswith("INSERT")]
    assert not Prompt.objects.exists()


def rows_of(prompt: Prompt) -> dict:
    """Every row a prompt got, ids aside: a slot's project and queue fields, a task's candidates by their
    place in the item, and whether their shown order is the shuffle seeded by the task's id."""
    candidates = list(prompt.candidates.order_by("id"))
    place = {c.pk: i for i, c in enumerate(candidates)}
    tasks = []
    for task in prompt.tasks.order_by("id"):
        shown = list(task.task_candidates.order_by("position").values_list("candidate_id", flat=True))
        seeded = sorted(shown)
        random.Random(task.pk).shuffle(seeded)
        tasks.append({
            "fields": [task.project_id == prompt.project_id, task.kind, task.round_id, task.source_job_id,
                       task.target_overlap, task.done_count, task.status, task.is_gold, task.gold_ranks],
            "slots": [[slot.project_id == prompt.project_id, slot.kind, slot.index, slot.status, slot.labeler_id,
                       slot.leased_at, slot.task_done_count, slot.task_open, slot.task_is_gold]
                      for slot in task.slots.order_by("index")],
            "candidates": sorted(place[c] for c in shown),
            "shown_in_seeded_order": shown == seeded,
        })
    return {"prompt": [prompt.text, prompt.messages, prompt.source, prompt.language, prompt.tags, prompt.split,
                       prompt.content_hash, prompt.author_id, prompt.client_token],
            "candidates": [[c.text, c.origin, c.model_version_id, c.generation_params, c.seed] for c in candidates],
            "tasks": tasks}


@pytest.mark.parametrize("demonstrations", [True, False])
def test_a_bulk_prompt_gets_the_rows_of_a_prompt_made_alone(db, demonstrations):
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Name three colours."}]
    batch = [{"text": "Plain?", "language": "de", "tags": ["t"]},
             {"text": "Ranked?", "candidates": ["a", {"text": "b", "origin": "human"}, "c", "d"]},
             {"messages": conversation, "candidates": ["red", "green", "blue", "grey"]}]
    bulk = make_project(k=4, overlap=3, demonstrations_enabled=demonstrations)
    alone = make_project(k=4, overlap=3, demonstrations_enabled=demonstrations)
    made = services.bulk_create_prompts(project=bulk, items=batch).created
    for prompt, item in zip(made, batch, strict=True):
        single, created = services._create_prompt_with_tasks(project=alone, item=item, source=Prompt.Source.IMPORTED)
        assert created and rows_of(prompt) == rows_of(single)
    ranked = rows_of(made[1])
    kinds = (["demonstration"] if demonstrations else []) + ["ranking"]
    assert [task["fields"][1] for task in ranked["tasks"]] == kinds
    assert ranked["tasks"][-1]["slots"] == [[True, "ranking", i, "free", None, None, 0, True, False] for i in range(3)]
    assert ranked["tasks"][-1]["candidates"] == [0, 1, 2, 3] and ranked["tasks"][-1]["shown_in_seeded_order"]
    assert ranked["candidates"][1] == ["b", "human", None, {}, None]


def test_a_prompt_created_concurrently_is_found_not_inserted_twice(db, monkeypatch):
    """Another import committed one of the chunk's prompts after the chunk's lookup: the unique index refuses
    the bulk insert, and the chunk is written one prompt at a time, finding it."""
    project = make_project()
    lookup, looked = services._prompts_with_hashes, []

    def before_the_other_commit(project, digests):
        looked.append(digests)
        return {} if len(looked) == 1 else lookup(project, digests)

    Prompt.objects.create(project=project, text="question 1?")
    monkeypatch.setattr(services, "_prompts_with_hashes", before_the_other_commit)
    result = services.bulk_create_prompts(project=project, items=items(3))
    assert [p.text for p in result.created] == ["question 0?", "question 2?"]
    assert [p.text for p in result.duplicates] == ["question 1?"] and Prompt.objects.count() == 3
    assert len(looked) == 1 + 3  # the chunk's lookup, then one for each prompt written alone
    assert Task.objects.filter(prompt__in=result.created).count() == 4  # a demonstration and a ranking task each


def test_the_file_importer_writes_prompts_in_batches_with_their_labels(db, tmp_path, monkeypatch):
    pairs = [{"prompt": f"pair prompt {i % 4}", "chosen": f"good {i}", "rejected": f"bad {i % 3}"} for i in range(10)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    whole = import_file(project=make_project(k=2), path=path, fmt="trl-pairwise")
    monkeypatch.setattr(services, "BULK_CHUNK", 3)  # a prompt's pairs fall in several batches
    calls = []
    project = make_project(k=2)
    batched = import_file(project=project, path=path, fmt="trl-pairwise",
                          on_progress=lambda done, total: calls.append((done, total)))
    assert batched == whole
    assert batched["created"] == {"prompts": 4, "demonstrations": 0, "rankings": 10, "candidates": 20}
    assert calls == [(i, 10) for i in range(1, 11)]
    assert Task.objects.filter(project=project, kind=TaskKind.DEMONSTRATION).count() == 4
    assert import_file(project=project, path=path, fmt="trl-pairwise")["duplicates"] == {
        "prompts": 4, "demonstrations": 0, "rankings": 10}
