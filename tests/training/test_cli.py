"""python -m training: flags become the stage config; the whole chain runs from the command line."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.training.conftest import ranking_records, sft_records, write_jsonl
from training import cli


@pytest.fixture(autouse=True)
def _restore_sigint():
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def test_python_dash_m_training_lists_the_stages():
    done = subprocess.run([sys.executable, "-m", "training", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert all(stage in done.stdout for stage in ("pretrain", "sft", "rm", "generate", "convert"))


def test_flags_and_a_config_file_build_the_stage_config(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"base": "b", "learning_rate": 0.5, "batch_size": 3}))
    args = cli.build_parser().parse_args(["sft", "--data", "d", "--out", "o", "--config", str(tmp_path / "c.json"),
                                          "--learning-rate", "0.1", "--lora", "--adam-betas", "[0.8, 0.9]"])
    config = cli._config(cli.STAGES["sft"], args)
    assert (config.base, config.learning_rate, config.batch_size, config.lora) == ("b", 0.1, 3, True)
    assert config.adam_betas == (0.8, 0.9)


def test_an_invalid_config_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        cli.main(["sft", "--data", "d", "--out", str(tmp_path), "--base", "b", "--learning-rate", "0"])


def test_sft_then_rm_then_generate_from_the_command_line(tiny_base, tmp_path, capsys):
    sft = write_jsonl(tmp_path / "sft.jsonl", sft_records(8))
    ranks = write_jsonl(tmp_path / "rank.jsonl", ranking_records())
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"version": 1, "prompt": "Tell me one fact about cats."}])
    common = ["--device", "cpu", "--max-length", "64", "--max-steps", "2", "--eval-fraction", "0"]
    assert cli.main(["sft", "--base", str(tiny_base), "--data", str(sft), "--out", str(tmp_path / "sft"), *common]) == 0
    assert cli.main(["rm", "--base", str(tmp_path / "sft"), "--data", str(ranks), "--out", str(tmp_path / "rm"),
                     "--demonstrations", str(sft), *common]) == 0
    assert cli.main(["generate", "--model", str(tmp_path / "sft"), "--prompts", str(prompts), "--out",
                     str(tmp_path / "gen"), "--k", "2", "--max-new-tokens", "5", "--stop", '["\\n\\nHuman:"]',
                     "--device", "cpu"]) == 0
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("sft", "rm", "gen")]
    assert [s["stage"] for s in summaries] == ["sft", "rm", "generate"]
    assert summaries[1]["demonstrations"] == 8
    assert '"status": "completed"' in capsys.readouterr().out


def test_convert_writes_contract_files_split_by_record_hash(shared_data, tmp_path, capsys):
    cli.main(["convert", "oasst", str(shared_data / "open-assistant/en_100_tree.jsonl"), "--out", str(tmp_path)])
    counts = json.loads(capsys.readouterr().out)
    assert counts["rankings.train"] + counts["rankings.heldout"] == 212
    from training.data import read_rankings

    train = read_rankings(tmp_path / "rankings.train.jsonl")
    held = read_rankings(tmp_path / "rankings.heldout.jsonl")
    assert {json.dumps(e.prompt) for e in train}.isdisjoint({json.dumps(e.prompt) for e in held})
