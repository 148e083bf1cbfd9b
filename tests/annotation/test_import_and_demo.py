"""manage.py import_prompts (line-numbered errors, all or nothing, real HH-RLHF data) and seed_demo."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from annotation import services
from annotation.formats import split_hh_pair
from annotation.models import Candidate, Demonstration, Membership, ModelVersion, Project, Prompt, Ranking, Task


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_bad_file_reports_every_bad_line_and_imports_nothing(project_a, tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [
        json.dumps({"text": "good"}),
        "{not json",
        json.dumps({"text": "wrong k", "candidates": ["a", "b"]}),
        json.dumps({"messages": [{"role": "user"}]}),
    ])
    with pytest.raises(CommandError) as err:
        call_command("import_prompts", str(path), project=project_a.name, verbosity=0)
    message = str(err.value)
    assert "line 2: not valid JSON" in message and "line 4: messages" in message
    assert Prompt.objects.count() == 0


def test_a_wrong_k_is_reported_with_its_line(project_a, tmp_path):
    lines = [json.dumps({"text": "ok"}), json.dumps({"text": "x", "candidates": ["a"]})]
    path = write_lines(tmp_path / "p.jsonl", lines)
    with pytest.raises(CommandError, match=r"line 2: candidates: a ranking task in this project needs exactly k=4"):
        call_command("import_prompts", str(path), project=str(project_a.pk), verbosity=0)
    assert Prompt.objects.count() == 0


def test_importing_twice_creates_nothing_new(project_a, tmp_path, capsys):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"text": f"prompt {i}"}) for i in range(5)])
    call_command("import_prompts", str(path), project=project_a.name, verbosity=0)
    call_command("import_prompts", str(path), project=project_a.name, verbosity=0)
    assert Prompt.objects.count() == 5
    assert "imported 0 prompts" in capsys.readouterr().out


def test_hh_rlhf_prompts_are_cut_at_the_shared_prefix():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Quote it\n\nAssistant: He said \"\n\nAssistant: no\"."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Quote it\n\nAssistant: No."
    prompt, good, bad = split_hh_pair(chosen, rejected)
    assert prompt.endswith("Quote it\n\nAssistant:")
    assert good == "He said \"\n\nAssistant: no\"." and bad == "No."


def test_the_real_hh_rlhf_file_imports_as_two_way_ranking_tasks(db, shared_data, tmp_path):
    Project.objects.create(name="hh", k=2, demonstrations_enabled=False)
    source = shared_data / "hh-rlhf/helpful-base/test.jsonl.gz"
    with gzip.open(source, "rt") as full:
        sample = [next(full) for _ in range(400)]
    path = tmp_path / "helpful-base" / "sample.jsonl"
    path.parent.mkdir()
    write_lines(path, [line.rstrip("\n") for line in sample])
    call_command("import_prompts", str(path), project="hh", format="hh-rlhf", verbosity=0)
    usable = Prompt.objects.count()
    assert 380 <= usable <= 400
    assert Task.objects.filter(kind="ranking").count() == usable
    assert Candidate.objects.count() == 2 * usable
    prompt = Prompt.objects.first()
    assert prompt.messages[-1]["role"] == "user" and prompt.tags == ["hh-rlhf", "helpful-base"]


def test_seed_demo_creates_users_project_and_real_tasks_once(db, capsys):
    call_command("seed_demo")
    out = capsys.readouterr().out
    assert "demo-labeler-1" in out and "demo-admin" in out
    hh, oasst = Project.objects.order_by("id")
    assert hh.k == 2 and Membership.objects.filter(project=hh).count() == 4  # 3 demo users + the HH importer
    assert Task.objects.filter(project=hh, kind="ranking").count() == 300
    assert Task.objects.filter(project=hh, kind="demonstration").count() == 300
    assert oasst.k == 4 and Membership.objects.filter(project=oasst).count() == 3
    assert Task.objects.filter(project=oasst, kind="ranking").count() == 24
    assert Candidate.objects.filter(prompt__project=oasst).count() == 96
    call_command("seed_demo")
    again = capsys.readouterr().out
    assert "already exists" in again and "demo-labeler-1 " not in again
    assert Project.objects.count() == 2 and Prompt.objects.count() == 324
    hh.refresh_from_db()
    assert hh.base_model.stage == "base" and (Path(hh.base_model.artifact_path) / "config.json").exists()
    imported = Ranking.objects.filter(labeler__username="hh-rlhf-import")
    assert imported.count() == 200 and Demonstration.objects.count() == 200
    assert all(r.ranks()[min(r.ranks())] == 1 for r in imported)  # the chosen (first) response ranks 1


def test_seed_demo_starts_the_demo_from_a_registered_base_with_its_chat_template(db, tmp_path, capsys):
    folder = tmp_path / "smol"
    shutil.copytree(Path(__file__).resolve().parents[2] / "training" / "assets" / "tiny-base", folder)
    registered = services.register_base(name="SmolLM2-135M-Instruct", path=folder)
    call_command("seed_demo", base="SmolLM2-135M-Instruct")
    hh = Project.objects.order_by("id").first()
    assert (hh.base_model, hh.chat_template, hh.round_preset) == (registered, True, "cpu")
    assert not ModelVersion.objects.filter(project=hh).exists()   # no private copy of the base


def test_seed_demo_without_a_base_uses_the_tiny_base_and_its_preset(db):
    call_command("seed_demo")
    hh = Project.objects.order_by("id").first()
    assert (hh.base_model.name, hh.chat_template, hh.round_preset) == ("offline tiny base", False, "tiny")


def test_seed_demo_names_a_missing_base(db):
    with pytest.raises(CommandError, match="no registered base"):
        call_command("seed_demo", base="nothing")
    assert not Project.objects.exists()
