"""POST /api/projects/{id}/import/: project admins upload a file of prompts and labels; the answer is the
report (201 when anything was created, 200 when all was there), or a 400 naming fields and lines.

adam administers project A; alice labels it and rita reviews it (both 403); olga is in no project (404);
sam is a site admin."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile

from annotation.api import views
from annotation.imports import importer
from annotation.models import Prompt, Ranking

PAIRS = [{"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."},
         {"prompt": [{"role": "user", "content": "Name a colour"}],
          "chosen": [{"role": "assistant", "content": "Blue"}], "rejected": [{"role": "assistant", "content": "7"}]}]


def upload(lines, name="pairs.jsonl") -> SimpleUploadedFile:
    body = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()
    return SimpleUploadedFile(name, body)


def post(client, project, file, fmt="trl-pairwise", **extra):
    return client.post(f"/api/projects/{project.pk}/import/", {"file": file, "format": fmt, **extra},
                       format="multipart")


def test_an_admin_imports_a_file_and_gets_the_report(client_for, project_a):
    response = post(client_for("adam"), project_a, upload(PAIRS))
    assert response.status_code == 201
    report = response.json()
    assert report["created"] == {"prompts": 2, "demonstrations": 0, "rankings": 2, "candidates": 4}
    assert report["rankings_by_k"] == {"2": 2} and report["source"] == "trl" and report["records"] == 2
    assert Ranking.objects.filter(task__project=project_a, labeler__username="trl-import").count() == 2


def test_uploading_the_same_file_again_is_a_200_with_duplicates(client_for, project_a):
    post(client_for("adam"), project_a, upload(PAIRS))
    response = post(client_for("adam"), project_a, upload(PAIRS))
    assert response.status_code == 200
    assert response.json()["duplicates"] == {"prompts": 2, "demonstrations": 0, "rankings": 2}
    assert Prompt.objects.count() == 2 and Ranking.objects.count() == 2


def test_a_gzipped_upload_with_a_source_of_its_own(client_for, project_a):
    file = SimpleUploadedFile("pairs.jsonl.gz", gzip.compress(upload(PAIRS).read()))
    response = post(client_for("sam"), project_a, file, source="ultrafeedback")
    assert response.status_code == 201 and response.json()["source"] == "ultrafeedback"
    assert Ranking.objects.filter(labeler__username="ultrafeedback-import").count() == 2


def test_bad_lines_are_a_400_with_their_numbers_and_nothing_is_imported(client_for, project_a):
    response = post(client_for("adam"), project_a, upload([PAIRS[0], "{oops", {"prompt": "p", "chosen": "a"}]))
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert body["fields"]["lines"] == {"2": ["not valid JSON: Expecting property name enclosed in double quotes "
                                             "at column 2"],
                                       "3": ["'rejected' is missing"]}
    assert not Prompt.objects.exists()


def test_a_missing_file_or_an_unknown_format_is_a_400_naming_the_field(client_for, project_a):
    client = client_for("adam")
    response = client.post(f"/api/projects/{project_a.pk}/import/", {"format": "oasst"}, format="multipart")
    assert response.status_code == 400 and "file" in response.json()["fields"]
    response = post(client, project_a, upload(PAIRS), fmt="xml")
    assert response.status_code == 400 and "format" in response.json()["fields"]
    response = post(client, project_a, upload(PAIRS), source="Bad Name!")
    assert response.status_code == 400 and "source" in response.json()["fields"]
    assert not Prompt.objects.exists()


def test_a_file_over_the_upload_limit_is_a_400_and_nothing_is_imported(client_for, project_a, settings):
    settings.IMPORT_MAX_UPLOAD_MB = 1
    response = post(client_for("adam"), project_a, SimpleUploadedFile("big.jsonl", b"\n" * (3 * 2**19)))
    assert response.status_code == 400
    assert response.json()["fields"]["file"] == [
        "the file is 1.5 MB; an upload takes at most 1 MB (IMPORT_MAX_UPLOAD_MB). Split it, or import it with "
        "manage.py import_data."]
    assert not Prompt.objects.exists()


def test_a_large_upload_streams_to_one_temporary_file_never_to_memory(client_for, project_a, settings,
                                                                      monkeypatch):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024  # Django's 2.5 MB, made small
    uploads, paths = [], []
    real_upload, real_file = views.import_upload, importer.import_file
    monkeypatch.setattr(views, "import_upload", lambda **kw: uploads.append(kw["upload"]) or real_upload(**kw))
    monkeypatch.setattr(importer, "import_file", lambda **kw: paths.append(kw["path"]) or real_file(**kw))
    pairs = [{"prompt": f"Say hi, number {i}", "chosen": "Hi!", "rejected": "Go away."} for i in range(30)]
    response = post(client_for("adam"), project_a, upload(pairs))
    assert response.status_code == 201 and response.json()["created"]["rankings"] == 30
    assert isinstance(uploads[0], TemporaryUploadedFile)
    assert paths == [Path(uploads[0].temporary_file_path())]  # read where Django spooled it: no second copy


def test_only_the_projects_admins_import(client_for, project_a):
    for name, status in (("alice", 403), ("rita", 403), ("olga", 404), (None, 401)):
        response = post(client_for(name), project_a, upload(PAIRS))
        assert response.status_code == status, name
    assert not Prompt.objects.exists()


def test_the_schema_describes_the_import(client_for, users):
    schema = client_for("alice").get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/projects/{id}/import/"]["post"]
    assert "multipart/form-data" in operation["requestBody"]["content"]
    assert {"200", "201"} <= set(operation["responses"])
