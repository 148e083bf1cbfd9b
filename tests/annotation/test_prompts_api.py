"""Prompts: create, bulk create (all or nothing), dedup by content hash, edits and deletes."""
from __future__ import annotations

from annotation import services
from annotation.models import Candidate, Prompt, Task, TaskKind
from tests.factories import best_first, demonstration_task, make_prompt, make_ranking_task

CONVERSATION = [
    {"role": "user", "content": "What's a good name for a cat?"},
    {"role": "assistant", "content": "How about Miso?"},
    {"role": "user", "content": "Something longer?"},
]


def test_an_admin_creates_a_conversation_prompt_with_candidates(client_for, project_a, users):
    payload = {"project": project_a.pk, "messages": CONVERSATION, "tags": ["pets"],
               "candidates": [{"text": t} for t in ["Mr. Whiskers", "Sir Pounce", "Cleopatra", "Bob"]]}
    response = client_for("adam").post("/api/prompts/", payload)
    assert response.status_code == 201
    prompt = Prompt.objects.get()
    assert prompt.messages == CONVERSATION and prompt.text.startswith("User: What's a good name")
    assert (prompt.source, prompt.author, prompt.tags) == ("imported", users["adam"], ["pets"])
    assert response.json()["split"] in ("train", "validation", "test")
    assert set(prompt.tasks.values_list("kind", flat=True)) == {TaskKind.DEMONSTRATION, TaskKind.RANKING}
    ranking_task = prompt.tasks.get(kind=TaskKind.RANKING)
    assert ranking_task.task_candidates.count() == 4 and ranking_task.slots.count() == project_a.overlap


def test_the_same_content_is_not_created_twice(client_for, project_a):
    first = client_for("adam").post("/api/prompts/", {"project": project_a.pk, "text": "Hello"})
    again = client_for("adam").post("/api/prompts/", {"project": project_a.pk, "text": "Hello"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and Prompt.objects.count() == 1


def test_a_ranking_task_needs_exactly_k_candidates(client_for, project_a):
    payload = {"project": project_a.pk, "text": "Hi", "candidates": [{"text": "a"}, {"text": "b"}]}
    response = client_for("adam").post("/api/prompts/", payload)
    assert response.status_code == 400
    assert "k=4" in response.json()["fields"]["items"]["0"]["candidates"][0]
    assert Prompt.objects.count() == 0 and Task.objects.count() == 0


def test_a_prompt_needs_text_or_messages(client_for, project_a):
    response = client_for("adam").post("/api/prompts/", {"project": project_a.pk, "text": "  "})
    assert response.status_code == 400 and "text" in response.json()["fields"]


def test_malformed_messages_are_a_400_naming_the_turn(client_for, project_a):
    bad = [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]
    response = client_for("adam").post("/api/prompts/", {"project": project_a.pk, "messages": bad})
    assert response.status_code == 400
    assert "turn 1" in response.json()["fields"]["messages"][0]


def test_bulk_create_is_all_or_nothing_with_errors_by_index(client_for, project_a):
    items = [{"text": "fine"}, {"text": ""}, {"text": "also fine", "candidates": [{"text": "only one"}]}]
    response = client_for("adam").post("/api/prompts/bulk/", {"project": project_a.pk, "items": items})
    assert response.status_code == 400
    fields = response.json()["fields"]["items"]
    assert set(fields) == {"1"} and "text" in fields["1"]
    assert Prompt.objects.count() == 0


def test_bulk_create_reports_created_and_duplicates(client_for, project_a):
    make_prompt(project_a, "old")
    items = [{"text": "old"}, {"text": "new one"}, {"text": "new two", "candidates": ["a", "b", "c", "d"]}]
    response = client_for("adam").post("/api/prompts/bulk/", {"project": project_a.pk, "items": items})
    assert response.status_code == 201
    body = response.json()
    assert len(body["created"]) == 2 and len(body["duplicates"]) == 1
    assert Candidate.objects.count() == 4
    retry = client_for("adam").post("/api/prompts/bulk/", {"project": project_a.pk, "items": items}).json()
    assert retry["created"] == [] and len(retry["duplicates"]) == 3 and Prompt.objects.count() == 3


def test_an_admin_edits_tags_but_not_content(client_for, project_a):
    prompt = make_prompt(project_a, "Tag me")
    response = client_for("adam").patch(f"/api/prompts/{prompt.pk}/", {"tags": ["easy"], "text": "changed"})
    assert response.status_code == 200
    prompt.refresh_from_db()
    assert prompt.tags == ["easy"] and prompt.text == "Tag me"


def test_a_prompt_with_labels_cannot_be_deleted(client_for, project_a, users):
    task = make_ranking_task(project_a)
    services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=2)
    response = client_for("adam").delete(f"/api/prompts/{task.prompt_id}/")
    assert response.status_code == 409
    assert Prompt.objects.filter(pk=task.prompt_id).exists() and task.rankings.count() == 1


def test_a_prompt_without_labels_is_deleted_with_its_tasks(client_for, project_a):
    prompt = make_prompt(project_a, "Delete me")
    assert demonstration_task(prompt)
    assert client_for("adam").delete(f"/api/prompts/{prompt.pk}/").status_code == 204
    assert Prompt.objects.count() == 0 and Task.objects.count() == 0


def test_prompt_lists_filter_by_split_and_source(client_for, project_a):
    for i in range(30):
        make_prompt(project_a, f"prompt {i}")
    body = client_for("rita").get("/api/prompts/", {"project": project_a.pk, "split": "train"}).json()
    assert body["count"] == Prompt.objects.filter(split="train").count() > 0
    assert all(row["split"] == "train" for row in body["results"])
    assert client_for("rita").get("/api/prompts/", {"source": "labeler"}).json()["count"] == 0


def test_project_settings_are_validated(client_for, project_a):
    response = client_for("adam").patch(f"/api/projects/{project_a.pk}/", {"k": 12, "top_p": 0, "overlap": 0})
    assert response.status_code == 400
    assert {"k", "top_p", "overlap"} <= set(response.json()["fields"])
    project_a.refresh_from_db()
    assert project_a.k == 4
