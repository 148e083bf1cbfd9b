"""Export files (issue 11): JSONL, Parquet and a DatasetDict, written by ``manage.py export_data``, load with
``datasets`` in the columns TRL's RewardTrainer expects.

alice labels project A; adam administers it.
"""
from __future__ import annotations

import gc
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command

from annotation import export_files, services
from annotation.models import split_for_hash
from tests.factories import demonstration_task, make_prompt, make_ranking_task

# RewardTrainer's preference columns (explicit prompt, standard format) and its optional margin, which its
# collator turns into a float tensor.
REWARD_TRAINER_FEATURES = {"prompt": datasets.Value("string"), "chosen": datasets.Value("string"),
                           "rejected": datasets.Value("string"), "margin": datasets.Value("float64")}


@pytest.fixture
def labelled(project_a, users):
    """Forty ranked prompts (enough to fill the three splits by hash) and a few demonstrations."""
    for i in range(40):
        task = make_ranking_task(project_a, f"rank prompt {i}")
        ids = sorted(task.task_candidates.values_list("candidate_id", flat=True))
        ranks = [1, 2, 2, 3] if i % 2 else [1, 2, 3, 4]
        services.submit_ranking(labeler=users["alice"], task=task, seconds_spent=1,
                                entries=[{"candidate": c, "rank": r} for c, r in zip(ids, ranks, strict=True)])
    for i in range(3):
        demo = demonstration_task(make_prompt(project_a, f"demo prompt {i}"))
        services.submit_demonstration(author=users["alice"], task=demo, text=f"answer {i}", seconds_spent=1)
    return project_a


def run_export(project, out, format: str, file_type: str = "jsonl", *extra: str) -> None:
    call_command("export_data", "--project", project.name, "--format", format, "--file-type", file_type,
                 "--out", str(out), *extra, verbosity=0)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_trl_pairwise_jsonl_export_loads_with_datasets_in_reward_trainer_columns(labelled, tmp_path):
    out = tmp_path / "pairs.jsonl"
    run_export(labelled, out, "trl-pairwise")
    loaded = datasets.load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == 20 * 6 + 20 * 5  # 6 pairs per strict ranking, 5 when one pair is tied
    assert {name: loaded.features[name] for name in REWARD_TRAINER_FEATURES} == REWARD_TRAINER_FEATURES
    assert loaded.features["tie"] == datasets.Value("bool")
    assert loaded.column_names[:5] == ["prompt", "chosen", "rejected", "margin", "tie"]
    assert sorted(set(loaded["margin"])) == [1.0, 2.0, 3.0]


def test_the_datasetdict_loads_from_disk_with_splits_by_prompt_hash(labelled, tmp_path):
    out = tmp_path / "pairs"
    run_export(labelled, out, "trl-pairwise", "datasets", "--ties", "both")
    loaded = datasets.load_from_disk(str(out))
    assert isinstance(loaded, datasets.DatasetDict) and set(loaded) == {"train", "validation", "test"}
    assert sum(split.num_rows for split in loaded.values()) == 20 * 6 + 20 * 7
    for name, split in loaded.items():
        assert {name: split.features[name] for name in REWARD_TRAINER_FEATURES} == REWARD_TRAINER_FEATURES
        assert all(split_for_hash(digest) == name == row_split
                   for digest, row_split in zip(split["prompt_hash"], split["split"], strict=True))
    assert loaded["train"].num_rows > 0 and loaded["validation"].num_rows + loaded["test"].num_rows > 0


def test_an_empty_split_is_an_empty_dataset_with_the_same_columns(labelled, tmp_path):
    out = tmp_path / "sft"
    run_export(labelled, out, "sft-messages", "datasets")
    loaded = datasets.load_from_disk(str(out))
    assert sum(split.num_rows for split in loaded.values()) == 3
    assert {tuple(split.column_names) for split in loaded.values()} == {
        ("messages", "id", "labeler", "prompt_hash", "split")}


@pytest.mark.parametrize("format", ["sft", "sft-messages", "trl-pairwise", "listwise", "per-labeler"])
def test_the_datasetdict_round_trips_the_jsonl_rows_split_by_split(labelled, tmp_path, monkeypatch, format):
    monkeypatch.setattr(export_files, "BATCH", 3)  # several record batches per split
    monkeypatch.setattr(export_files, "ROW_GROUP", 7)
    run_export(labelled, tmp_path / "rows.jsonl", format)
    run_export(labelled, tmp_path / "rows", format, "datasets")
    expected = read_jsonl(tmp_path / "rows.jsonl")
    loaded = datasets.load_from_disk(str(tmp_path / "rows"))
    assert type(loaded) is datasets.DatasetDict and list(loaded) == ["train", "validation", "test"]
    for name, split in loaded.items():
        assert split.split == name
        assert split.features == datasets.Features.from_arrow_schema(export_files.SCHEMAS[format])
        assert split.to_list() == [row for row in expected if row["split"] == name]


def test_an_empty_split_loads_with_the_features_of_the_others(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}", "id": f"d{i}", "labeler": "alice", "prompt_hash": "h",
             "split": "train"} for i in range(5)]
    assert export_files.write_export(iter(rows), tmp_path / "sft", fmt="sft", file_type="datasets") == 5
    loaded = datasets.load_from_disk(str(tmp_path / "sft"))
    assert {name: split.num_rows for name, split in loaded.items()} == {"train": 5, "validation": 0, "test": 0}
    assert loaded["train"].to_list() == rows
    assert loaded["validation"].features == loaded["test"].features == loaded["train"].features


def test_the_datasetdict_is_written_once_without_a_datasets_copy(labelled, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the export must stream the save_to_disk layout itself")

    with monkeypatch.context() as patched:
        for owner, name in [(datasets.Dataset, "save_to_disk"), (datasets.DatasetDict, "save_to_disk"),
                            (datasets.Dataset, "from_file")]:
            patched.setattr(owner, name, refuse)
        run_export(labelled, tmp_path / "ranks", "listwise", "datasets")
    assert [p.name for p in tmp_path.iterdir()] == ["ranks"]  # nothing staged is left behind
    assert sorted(p.name for p in (tmp_path / "ranks").iterdir()) == ["dataset_dict.json", "test", "train",
                                                                       "validation"]
    for split in ("train", "validation", "test"):
        assert sorted(p.name for p in (tmp_path / "ranks" / split).iterdir()) == [
            "data-00000-of-00001.arrow", "dataset_info.json", "state.json"]
    assert sum(split.num_rows for split in datasets.load_from_disk(str(tmp_path / "ranks")).values()) == 40


@pytest.mark.parametrize("format", ["sft", "sft-messages", "trl-pairwise", "listwise", "per-labeler"])
def test_parquet_holds_the_same_rows_as_jsonl_in_row_groups(labelled, tmp_path, monkeypatch, format):
    monkeypatch.setattr(export_files, "BATCH", 3)
    monkeypatch.setattr(export_files, "ROW_GROUP", 7)
    run_export(labelled, tmp_path / "rows.jsonl", format)
    run_export(labelled, tmp_path / "rows.parquet", format, "parquet")
    expected = read_jsonl(tmp_path / "rows.jsonl")
    parquet = pq.ParquetFile(tmp_path / "rows.parquet")
    assert parquet.read().to_pylist() == expected
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
    assert sizes == [7] * (len(expected) // 7) + ([len(expected) % 7] if len(expected) % 7 else [])
    assert parquet.schema_arrow == export_files.SCHEMAS[format]


def test_the_command_reports_bad_parameters_and_writes_nothing(labelled, tmp_path):
    out = tmp_path / "pairs.jsonl"
    with pytest.raises(CommandError, match="--ties: applies to the trl-pairwise format only"):
        run_export(labelled, out, "listwise", "jsonl", "--ties", "both")
    with pytest.raises(CommandError, match="--labeler: no user named 'zed'"):
        run_export(labelled, out, "listwise", "jsonl", "--labeler", "zed")
    with pytest.raises(CommandError, match="no project"):
        call_command("export_data", "--project", "nope", "--format", "sft", "--out", str(out), verbosity=0)
    assert list(tmp_path.iterdir()) == []


def test_a_datasetdict_never_overwrites_an_existing_directory(labelled, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(CommandError, match="already exists"):
        run_export(labelled, tmp_path / "taken", "listwise", "datasets")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]


def test_an_export_runs_with_the_old_objects_frozen_and_arrow_on_malloc_and_puts_both_back(tmp_path):
    pool = pa.default_memory_pool()
    seen = []

    def rows():
        seen.append((gc.get_freeze_count() > 0, pa.default_memory_pool().backend_name))
        yield {"prompt": "p", "completion": "c", "id": "demonstration-1", "labeler": "alice", "prompt_hash": "h",
               "split": "train"}

    for file_type in ("jsonl", "parquet", "datasets"):
        assert export_files.write_export(rows(), tmp_path / f"out-{file_type}", fmt="sft", file_type=file_type) == 1
    assert seen == [(True, "system")] * 3
    assert gc.get_freeze_count() == 0 and pa.default_memory_pool().backend_name == pool.backend_name
    with pytest.raises(FileExistsError):  # put back when the export fails too
        export_files.write_export(rows(), tmp_path / "out-datasets", fmt="sft", file_type="datasets")
    assert gc.get_freeze_count() == 0 and pa.default_memory_pool().backend_name == pool.backend_name
