"""Export files: JSONL, Parquet (streamed in row groups) and an HF ``datasets`` DatasetDict saved to disk.

Apart from ``annotation.exporting`` so that the web process, which only streams JSONL, never loads pyarrow
and ``datasets`` (about 100 MB per process). Each file is written beside its target and renamed into place,
so an interrupted export leaves no half-written file under the final name.

The DatasetDict has one split per prompt split (train, validation, test: ``split_for_hash`` of the prompt's
content hash, so a prompt never changes split between exports). It is written in ``DatasetDict.save_to_disk``'s
layout directly, which ``datasets.load_from_disk`` reads: one pass over the rows streams each split's single
shard (an Arrow stream file) into its folder, then the small JSON files follow. Going through ``datasets``
instead (``Dataset.from_file`` on stream files, then ``save_to_disk``) wrote every row twice and read the
files back through a memory map whose pages counted in the process's RSS: 1 GB for a million listwise rows.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.fingerprint import generate_random_fingerprint

from .exporting import FORMATS, write_jsonl
from .models import Split

FILE_TYPES = ("jsonl", "parquet", "datasets")
BATCH = 1_000  # rows held as Python objects before they become Arrow (compact, and no work for the GC)
ROW_GROUP = 20_000  # rows per Parquet row group
_SHARD = "data-00000-of-00001.arrow"  # save_to_disk's name for the only shard of a split

_TAIL = [("id", pa.string()), ("labeler", pa.string()), ("prompt_hash", pa.string()), ("split", pa.string())]
_TURN = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMAS: dict[str, pa.Schema] = {
    "sft": pa.schema([("prompt", pa.string()), ("completion", pa.string()), *_TAIL]),
    "sft-messages": pa.schema([("messages", pa.list_(_TURN)), *_TAIL]),
    "trl-pairwise": pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
                               ("margin", pa.float64()), ("tie", pa.bool_()), *_TAIL]),
    "listwise": pa.schema([("prompt", pa.string()), ("responses", pa.list_(pa.string())),
                           ("ranks", pa.list_(pa.int64())), *_TAIL]),
    "per-labeler": pa.schema([
        ("prompt", pa.string()), ("responses", pa.list_(pa.string())), ("consensus_ranks", pa.list_(pa.int64())),
        ("consensus_confidence", pa.list_(pa.float64())),
        ("rankings", pa.list_(pa.struct([("labeler", pa.string()), ("ranking_id", pa.int64()),
                                         ("ranks", pa.list_(pa.int64())), ("review_status", pa.string())]))),
        *_TAIL]),
}
assert set(SCHEMAS) == set(FORMATS)


class _SplitWriters:
    """One ParquetWriter (or Arrow stream writer) per split. Rows become Arrow every ``BATCH`` rows, and a row
    group (or record batch) of ``ROW_GROUP`` rows is written as soon as one is complete."""

    def __init__(self, paths: dict[str, Path], schema: pa.Schema, open_writer=pq.ParquetWriter):
        self.schema = schema
        self.writers = {split: open_writer(str(path), schema) for split, path in paths.items()}
        self.rows: dict[str, list[dict]] = {split: [] for split in paths}
        self.pending: dict[str, list[pa.Table]] = {split: [] for split in paths}
        self.counts = dict.fromkeys(paths, 0)

    def add(self, split: str, row: dict) -> None:
        rows = self.rows[split]
        rows.append(row)
        if len(rows) >= BATCH:
            self._flush(split, final=False)

    def _flush(self, split: str, *, final: bool) -> None:
        if self.rows[split]:
            self.pending[split].append(pa.Table.from_pylist(self.rows[split], schema=self.schema))
            self.counts[split] += len(self.rows[split])
            self.rows[split] = []
        pending = pa.concat_tables(self.pending[split]) if self.pending[split] else None
        while pending is not None and (pending.num_rows >= ROW_GROUP or final and pending.num_rows):
            self.writers[split].write_table(pending.slice(0, ROW_GROUP))
            pending = pending.slice(ROW_GROUP)
        self.pending[split] = [pending] if pending is not None and pending.num_rows else []

    def close(self) -> dict[str, int]:
        for split, writer in self.writers.items():
            self._flush(split, final=True)
            writer.close()
        return self.counts


def write_parquet(rows: Iterable[dict], out: Path, fmt: str) -> int:
    """One Parquet file, row group by row group; returns the number of rows."""
    writers = _SplitWriters({"all": out}, SCHEMAS[fmt])
    try:
        for row in rows:
            writers.add("all", row)
    finally:
        counts = writers.close()
    return counts["all"]


def write_dataset_dict(rows: Iterable[dict], out: Path, fmt: str) -> dict[str, int]:
    """A DatasetDict with the train, validation and test splits, in the layout ``DatasetDict.save_to_disk``
    writes (``out`` must not exist); returns rows per split. Every split has exactly one shard, even when empty
    (an empty stream file holds just the schema): ``load_from_disk`` fails on a split with none."""
    features = datasets.Features.from_arrow_schema(SCHEMAS[fmt])
    folders = {split: out / split for split in Split.values}
    for folder in folders.values():
        folder.mkdir(parents=True)
    # features.arrow_schema is what save_to_disk's ArrowWriter wrote: the same types, plus the features as
    # "huggingface" metadata.
    writers = _SplitWriters({split: folder / _SHARD for split, folder in folders.items()}, features.arrow_schema,
                            open_writer=pa.ipc.new_stream)
    try:
        for row in rows:
            writers.add(row["split"], row)
    finally:
        counts = writers.close()
    (out / "dataset_dict.json").write_text(json.dumps({"splits": list(folders)}))
    info = datasets.DatasetInfo(features=features)
    for split, folder in folders.items():
        info.write_to_directory(str(folder), pretty_print=True)  # dataset_info.json
        (folder / "state.json").write_text(json.dumps(_state(split), indent=2, sort_keys=True))
    return counts


def _state(split: str) -> dict:
    """The state.json ``Dataset.save_to_disk`` writes for an unformatted dataset of one shard. The fingerprint
    names the dataset's cached transforms; a random one is what ``datasets`` gives a dataset it cannot hash."""
    return {"_data_files": [{"filename": _SHARD}], "_fingerprint": generate_random_fingerprint(),
            "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
            "_split": split}


@contextmanager
def _old_objects_frozen() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects that existed before the export. An export allocates
    a few container objects per label; those alive when a collection runs (the chunk being read, the rows
    being batched) survive into the oldest generation, so a full collection comes every 30,000 or so labels,
    and each walked every object Django, pyarrow and ``datasets`` had loaded: 0.22-0.27 s of the 1.6-2.2 s of
    CPU a listwise export of 100,000 rankings took (3 runs), and next to nothing frozen. ``gc.freeze`` moves
    those objects to the permanent generation for the duration of the export; ``gc.unfreeze`` gives them back
    to the oldest generation afterwards. Garbage made during the export is collected as before."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def _system_memory_pool() -> Iterator[None]:
    """Arrow allocates from the C library's malloc for the duration of the export. Its default pool in this
    pyarrow build, mimalloc, made ``Table.from_pylist`` four times slower in a fresh process (0.55-0.64 against
    0.13-0.20 s per 100,000 listwise rows, 3 runs each; the system and jemalloc pools were alike): about 4 µs per
    row of a Parquet or DatasetDict export, which runs once in a fresh process. Buffers remember their pool, so
    those still alive afterwards are freed correctly."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def write_export(rows: Iterable[dict], out: Path, *, fmt: str, file_type: str) -> int:
    """Write an export as ``file_type``, staged beside ``out`` and renamed into place; returns the rows written.
    A DatasetDict goes to a new directory: an existing ``out`` is refused, never overwritten."""
    out = Path(out)
    if file_type not in FILE_TYPES:
        raise ValueError(f"file type must be one of {', '.join(FILE_TYPES)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _old_objects_frozen(), _system_memory_pool():
        return _write_export(rows, out, fmt=fmt, file_type=file_type)


def _write_export(rows: Iterable[dict], out: Path, *, fmt: str, file_type: str) -> int:
    if file_type == "datasets":
        if out.exists():
            raise FileExistsError(f"{out} already exists")
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=".staging-"))
        try:
            total = sum(write_dataset_dict(rows, staging / "dataset", fmt).values())
            os.rename(staging / "dataset", out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return total
    handle, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    os.close(handle)
    os.chmod(name, 0o644)  # mkstemp's 0600 would follow the file through the rename
    try:
        total = write_jsonl(rows, name) if file_type == "jsonl" else write_parquet(rows, Path(name), fmt)
        os.replace(name, out)
    finally:
        if os.path.exists(name):
            os.unlink(name)
    return total
