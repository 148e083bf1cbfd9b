"""The project page's "Import data" upload in a real browser. The page posts the file to the API's import
(one code path with manage.py import_data); these tests watch the <progress> bar fill with the upload, the
processing state, then the report, or the bad lines by number with nothing written.

adam administers project A and imports the real OpenAssistant trees from ../shared/data: the report carries
the counts tests/annotation/test_import_real_data.py asserts for the same file. alice labels project A: she
gets no form, and the API refuses her upload.
"""
from __future__ import annotations

import gzip
import json

import pytest
from django.contrib.auth import get_user_model

from annotation.imports.readers import FORMATS, HINTS
from annotation.models import Candidate, Demonstration, Prompt, Ranking, RankingEntry, Task, TaskSlot

pytestmark = [pytest.mark.browser, pytest.mark.slow]
OASST = "open-assistant/en_100_tree.jsonl"
# The status line's every text, in order (Playwright's evaluate is not bound by the page's CSP).
WATCH_STATUS = """() => {
  window.__states = [];
  const status = document.getElementById("import-status");
  new MutationObserver(() => window.__states.push(status.textContent))
    .observe(status, {childList: true, characterData: true, subtree: true});
}"""


def database_counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in (
        Prompt, Task, TaskSlot, Candidate, Ranking, RankingEntry, Demonstration, get_user_model())}


def open_project_page(login, project, name: str = "adam"):
    page = login(name)
    page.goto(f"/manage/projects/{project.pk}/")
    return page


def upload(page, path, fmt: str) -> list[str]:
    """Upload the file through the form and wait for the answer; returns the status line's texts."""
    page.select_option("#import-format", fmt)
    page.set_input_files("#import-file", str(path))
    page.evaluate(WATCH_STATUS)
    page.click("#import-upload")
    page.wait_for_selector("#import-upload:not([disabled])", timeout=120_000)
    return page.evaluate("window.__states")


def report_rows(page) -> dict[str, tuple[str, str]]:
    """kind → (created, skipped) as the report table shows them."""
    return {row.get_attribute("data-kind"): (row.locator("[data-field=created]").inner_text(),
                                             row.locator("[data-field=skipped]").inner_text())
            for row in page.locator("#import-report tbody tr").all()}


def assert_progress_is_full(page, at_least: int):
    value, maximum = page.eval_on_selector("#import-progress", "bar => [bar.value, bar.max]")
    assert value == maximum >= at_least  # the whole multipart body: the file and the form around it


def test_an_admin_uploads_openassistant_trees_and_sees_progress_then_the_exact_report(
        login, project_a, shared_data, tmp_path):
    path = shared_data / OASST
    page = open_project_page(login, project_a)
    blocked = []  # what the Content-Security-Policy refused (an inline script or handler would be)
    page.on("console", lambda message: "Content Security Policy" in message.text and blocked.append(message.text))

    states = upload(page, path, "oasst")
    assert states[0] == "Uploading en_100_tree.jsonl…"
    assert "Processing: checking every line, then importing…" in states
    assert states[-1] == page.inner_text("#import-status") == "Imported."
    assert_progress_is_full(page, path.stat().st_size)
    assert report_rows(page) == {"prompts": ("480", "0"), "demonstrations": ("670", "0"),
                                 "rankings": ("212", "0"), "candidates": ("641", "–")}
    assert page.locator("#import-details li").all_inner_texts() == [
        '100 records read as oasst; labels recorded under the source "oasst".',
        "Rankings created by k: k=2: 57, k=3: 117, k=4: 27, k=5: 3, k=6: 6, k=8: 1, k=9: 1.",
        "Ties: 0 rankings with 0 tied pairs.",
        "Left out (synthetic reply (not a demonstration)): 17",
        "Left out (unranked reply beside ranked ones): 1",
    ]
    assert Prompt.objects.filter(project=project_a).count() == 480
    assert Ranking.objects.filter(task__project=project_a, labeler__username="oasst-import").count() == 212
    assert Demonstration.objects.filter(task__project=project_a).count() == 670

    # The same trees gzipped: the importer reads gzip by content, and everything is already there.
    gzipped = tmp_path / "en_100_tree.jsonl.gz"
    gzipped.write_bytes(gzip.compress(path.read_bytes()))
    before = database_counts()
    states = upload(page, gzipped, "oasst")
    assert states[-1] == "Nothing new: everything in the file was already in the project."
    assert_progress_is_full(page, gzipped.stat().st_size)
    assert report_rows(page) == {"prompts": ("0", "480"), "demonstrations": ("0", "670"),
                                 "rankings": ("0", "212"), "candidates": ("0", "–")}
    assert database_counts() == before
    assert page.problems == [] and blocked == []


def test_a_malformed_file_lists_its_bad_lines_by_number_and_writes_nothing(login, project_a, shared_data, tmp_path):
    lines = (shared_data / OASST).read_text().splitlines()
    tree = json.loads(lines[11])
    del tree["prompt"]["replies"][0]["text"]
    lines[11] = json.dumps(tree)
    lines[56] = lines[56][: len(lines[56]) // 2]  # cut in half
    path = tmp_path / "trees.jsonl"
    path.write_text("\n".join(lines) + "\n")
    page = open_project_page(login, project_a)
    before = database_counts()

    states = upload(page, path, "oasst")
    assert "Processing: checking every line, then importing…" in states
    assert page.inner_text("#import-status") == "Nothing was imported: 2 bad lines."
    assert_progress_is_full(page, path.stat().st_size)
    errors = page.locator("#import-errors li").all_inner_texts()
    assert len(errors) == 2
    assert errors[0] == "line 12: prompt.replies.0: 'text' must be a string"
    assert errors[1].startswith("line 57: not valid JSON: Unterminated string")
    assert page.locator("#import-report").is_hidden()
    assert database_counts() == before
    assert page.problems == []


def test_text_from_the_file_is_shown_as_text_never_as_html(login, project_a, tmp_path):
    bad_origin = '<img src=x onerror="window.__xss = 1">'
    line = {"text": "<script>window.__xss = 2</script>",
            "candidates": [{"text": "a", "origin": bad_origin}, "b", "c", "d"]}
    path = tmp_path / "<img src=x onerror=window.__xss=3>.jsonl"  # the name is shown too
    path.write_text(json.dumps(line) + "\n")
    page = open_project_page(login, project_a)
    before = database_counts()

    states = upload(page, path, "items")
    assert states[0] == "Uploading <img src=x onerror=window.__xss=3>.jsonl…"
    assert page.locator("#import-errors li").all_inner_texts() == [
        f'line 1: candidates.0.origin: "{bad_origin}" is not a valid choice.']
    assert page.locator("#import-form img, #import-form script").count() == 0
    assert page.evaluate("window.__xss") is None
    assert database_counts() == before
    assert page.problems == []


def test_a_labeler_sees_no_import_form_and_the_api_refuses_her_upload(login, page, project_a):
    login("alice")
    assert page.locator(f"a[href='/manage/projects/{project_a.pk}/']").count() == 0
    response = page.goto(f"/manage/projects/{project_a.pk}/")
    assert response.status == 403 and page.locator("#import-form").count() == 0

    page.goto("/")
    status, body = page.evaluate("""async (url) => {
      const form = new FormData();
      form.append("file", new Blob(['{"text": "Let me in"}\\n']), "prompts.jsonl");
      form.append("format", "items");
      const token = decodeURIComponent(document.cookie.match(/(?:^|;\\s*)csrftoken=([^;]+)/)[1]);
      const answer = await fetch(url, {method: "POST", body: form, credentials: "same-origin",
                                       headers: {"X-CSRFToken": token, "Accept": "application/json"}});
      return [answer.status, await answer.json()];
    }""", f"/api/projects/{project_a.pk}/import/")
    assert (status, body["code"]) == (403, "permission_denied")
    assert "CSRF" not in body["message"]  # refused for her role, not for a missing token
    assert not Prompt.objects.exists()


def test_a_file_over_the_upload_limit_is_refused_before_it_is_sent(login, project_a, settings, tmp_path):
    settings.IMPORT_MAX_UPLOAD_MB = 1
    path = tmp_path / "big.jsonl"
    path.write_text((json.dumps({"text": "x" * 1000}) + "\n") * 1552)  # 1.5 MB
    page = open_project_page(login, project_a)
    assert "at most 1 MB" in page.inner_text("label[for=import-file]")
    sent = []
    page.on("request", lambda request: "/import/" in request.url and sent.append(request.url))

    page.select_option("#import-format", "items")
    page.set_input_files("#import-file", str(path))
    page.click("#import-upload")
    assert page.inner_text("#import-status") == (
        "The file is 1.5 MB; an upload takes at most 1 MB. Split it, or import it with manage.py import_data.")
    assert page.locator("#import-status.error").count() == 1 and page.locator("#import-progress").is_hidden()
    assert sent == [] and not Prompt.objects.exists()


def test_the_format_select_offers_every_import_format_with_its_hint(login, project_a):
    page = open_project_page(login, project_a)
    assert page.eval_on_selector_all("#import-format option", "options => options.map(o => o.value)") == list(FORMATS)
    for fmt in FORMATS:
        page.select_option("#import-format", fmt)
        assert page.inner_text("#import-format-hint") == HINTS[fmt] != ""
    assert page.problems == []
