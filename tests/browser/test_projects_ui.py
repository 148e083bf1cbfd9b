"""A site admin creates a project with a base model and a prompt file in the browser, and a project's
admin picks its base model. sam is a site admin; adam administers project A."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from annotation import services
from annotation.models import Project

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TINY_BASE = Path(__file__).resolve().parents[2] / "training" / "assets" / "tiny-base"


@pytest.fixture
def registered(tmp_path, db):
    folder = tmp_path / "base"
    shutil.copytree(TINY_BASE, folder)
    (folder / "PROVENANCE.json").write_text(json.dumps({"licence": "Apache-2.0"}))
    return services.register_base(name="SmolLM2-135M-Instruct", path=folder)


def test_a_site_admin_creates_a_project_with_a_base_and_a_prompt_file(login, users, registered, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"Why is the sky blue, part {i}?"}) + "\n" for i in range(3)))
    page = login("sam")
    page.click("text=New project")
    page.fill("#name", "Browser project")
    page.fill("#k", "3")
    page.select_option("#base_model", str(registered.pk))
    page.set_input_files("#prompts", str(prompts))
    page.click("#new-project button[type=submit]")
    page.wait_for_url(re.compile(r".*/manage/projects/\d+/$"))
    project = Project.objects.get(name="Browser project")
    assert (project.k, project.base_model_id, project.prompts.count()) == (3, registered.pk, 3)
    assert project.demonstrations_enabled and page.problems == []


def test_a_bad_prompt_file_is_reported_by_line_and_creates_nothing(login, users, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"text": "fine"}) + "\n{broken\n")
    page = login("sam")
    page.goto("/manage/projects/new/")
    page.fill("#name", "Broken project")
    page.set_input_files("#prompts", str(prompts))
    page.click("#new-project button[type=submit]")
    page.wait_for_selector("#toast:has-text('lines')")
    assert "2" in page.inner_text("#toast") and not Project.objects.filter(name="Broken project").exists()


def test_a_project_admin_picks_the_projects_base_model(login, users, project_a, registered):
    page = login("adam")
    page.goto(f"/manage/projects/{project_a.pk}/")
    page.select_option("#base-model", str(registered.pk))
    page.click("#set-base")
    page.wait_for_selector("#toast:has-text('Base model saved')")
    project_a.refresh_from_db()
    assert project_a.base_model == registered and page.problems == []


def test_the_api_docs_render_under_the_content_security_policy(login, users):
    """The docs page is served with the site's CSP (no inline script): Swagger UI must still build the
    operations list, and the browser must report no CSP violation."""
    page = login("alice")
    violations = []
    page.on("console", lambda message: violations.append(message.text)
            if "Content Security Policy" in message.text else None)
    response = page.goto("/api/docs/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector(".opblock-summary-path", timeout=15000)
    assert page.locator(".opblock").count() > 20
    assert violations == [] and page.problems == []
