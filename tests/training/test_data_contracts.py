"""The versioned JSONL contracts: every bad line is reported by number, nothing is dropped."""
from __future__ import annotations

import gzip
import json

import pytest

from tests.training.conftest import ranking_records, sft_records, write_jsonl
from training import data


def test_it_reads_valid_sft_ranking_and_ppo_files(tmp_path):
    sft = data.read_sft(write_jsonl(tmp_path / "s.jsonl", sft_records(3)))
    ranks = data.read_rankings(write_jsonl(tmp_path / "r.jsonl", ranking_records()))
    ppo = data.read_ppo_prompts(write_jsonl(tmp_path / "p.jsonl", [
        {"version": 1, "prompt": [{"role": "user", "content": "hi"}], "id": "p1"}]))
    assert [e.response for e in sft][0] == "Here is a fact about cats: they are number 0."
    assert [e.k for e in ranks] == [2, 3, 4, 5, 2, 3, 4, 5]
    assert ranks[1].ranks == [1, 2, 3] and ranks[1].best_response() == "yes yes yes, glad to help"
    assert ppo[0].id == "p1" and ppo[0].prompt[0]["content"] == "hi"


def test_it_reports_every_bad_line_with_its_number(tmp_path):
    good = ranking_records()[0]
    lines = [good, {**good, "ranks": [1, 3]}, good, {**good, "version": 2}, "not json", {**good, "ranks": [1, 1]}]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    with pytest.raises(data.DataError) as caught:
        data.read_rankings(path)
    assert [number for number, _ in caught.value.errors] == [2, 4, 5, 6]
    messages = dict(caught.value.errors)
    assert "dense" in messages[2] and "version must be 1" in messages[4]
    assert "not valid JSON" in messages[5] and "tied" in messages[6]
    assert f"{path}:2:" in str(caught.value)


@pytest.mark.parametrize("record, message", [
    ({"prompt": "p", "response": "r"}, "version"),
    ({"version": 1, "prompt": "", "response": "r"}, "prompt is empty"),
    ({"version": 1, "prompt": "p", "response": " "}, "response must be a non-empty string"),
    ({"version": 1, "prompt": [{"role": "assistant", "content": "x"}], "response": "r"}, "role 'user'"),
    ({"version": 1, "prompt": [{"role": "robot", "content": "x"}], "response": "r"}, "role must be one of"),
    ({"version": 1, "prompt": "p", "response": "r", "extra": 1}, "unknown field(s): extra"),
])
def test_it_rejects_a_malformed_sft_record(record, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.parse_sft(record)


@pytest.mark.parametrize("ranks, ok", [([1, 2, 3], True), ([1, 1, 2], True), ([2, 1, 1], True),
                                       ([1, 3, 2], True), ([0, 1, 2], False), ([1, 3, 3], False),
                                       ([2, 2, 2], False), ([1, 2], False), ([1, True, 2], False)])
def test_ranks_must_be_dense_from_one_with_one_per_response(ranks, ok):
    record = {"version": 1, "prompt": "p", "responses": ["a", "b", "c"], "ranks": ranks}
    if ok:
        assert data.parse_ranking(record).ranks == ranks
    else:
        with pytest.raises(ValueError):
            data.parse_ranking(record)


def test_a_ranking_weight_must_be_positive():
    record = {"version": 1, "prompt": "p", "responses": ["a", "b"], "ranks": [1, 2]}
    assert data.parse_ranking({**record, "weight": 2}).weight == 2.0
    with pytest.raises(ValueError, match="weight"):
        data.parse_ranking({**record, "weight": 0})


def test_it_reads_gzip_files_and_round_trips_records(tmp_path):
    examples = data.read_rankings(write_jsonl(tmp_path / "r.jsonl", ranking_records()))
    path = tmp_path / "again.jsonl.gz"
    data.write_jsonl(path, map(data.to_record, examples))
    with gzip.open(path, "rt") as f:
        assert json.loads(f.readline())["version"] == 1
    assert data.read_rankings(path) == examples


def test_an_empty_file_is_an_error_not_an_empty_dataset(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(data.DataError, match="no records"):
        data.read_sft(tmp_path / "empty.jsonl")


def test_the_held_out_split_is_fixed_by_prompt_hash():
    prompts = [f"prompt {i}" for i in range(2000)]
    held = [p for p in prompts if data.is_held_out(p, 0.1)]
    assert 150 < len(held) < 250
    assert held == [p for p in prompts if data.is_held_out(p, 0.1)]  # deterministic
    # Pinned: changing the hash rule would silently reshuffle everyone's held-out sets.
    assert data.record_hash("prompt 0")[:8] == "d0a7c53d"  # sha256 of the JSON string "\"prompt 0\""
    examples = [data.SFTExample(p, "a") for p in prompts] + [data.SFTExample(p, "b") for p in prompts]
    train, held_out = data.split_by_hash(examples, 0.1)
    assert {e.prompt for e in train}.isdisjoint({e.prompt for e in held_out})


def test_the_plain_format_renders_messages_hh_style():
    prompt = [{"role": "user", "content": "Hi "}, {"role": "assistant", "content": "Hello"},
              {"role": "user", "content": "Bye"}]
    assert data.render_plain(prompt) == "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant:"
    assert data.render_plain("as is") == "as is"
