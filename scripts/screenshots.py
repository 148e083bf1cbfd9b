"""Regenerate docs/screenshots/: every labeler page, as a person sees it at 1280×720.

    .venv/bin/python scripts/screenshots.py

It builds a throwaway demo (SQLite in a temp dir, the shipped demo data), serves it with gunicorn as
in production, and drives Debian's Chromium (/usr/bin/chromium) with Playwright.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
PASSWORD = "screenshots-only-pw"
SETUP = f"""
import logging
logging.disable(logging.WARNING)
from django.contrib.auth.models import User
from annotation import services
from annotation.models import Project
for user in User.objects.all():
    user.set_password({PASSWORD!r}); user.save()
alice = User.objects.get(username="demo-labeler-1")
hh = Project.objects.get(k=2)
for kind in ("ranking", "demonstration"):
    lease = services.next_task(user=alice, project=hh, kind=kind)
    task = hh.tasks.get(pk=lease.task_id)
    if kind == "ranking":
        ids = list(task.task_candidates.values_list("candidate_id", flat=True))
        services.submit_ranking(labeler=alice, task=task, seconds_spent=42,
                                entries=[{{"candidate": c, "rank": i + 1}} for i, c in enumerate(ids)])
    else:
        services.submit_demonstration(author=alice, task=task, text="A first answer.", seconds_spent=95)
# A short training round (run in-process) so the admin pages have jobs, charts and lineage to show.
from rlhf_platform.celery import app
from annotation.loop import rounds
app.loader.import_default_modules()  # registers annotation.tasks, as a worker's autodiscovery does
app.conf.task_always_eager = True
rounds.start_round(project=hh, config={{
    "sft": {{"max_steps": 20, "log_every": 1}}, "rm": {{"max_steps": 20, "log_every": 1}},
    "ppo": {{"iterations": 6, "batch_size": 4, "minibatch_size": 2, "max_prompt_length": 96}},
    "generate": {{"prompts": 4, "models": ["ppo", "sft"]}}}})
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as var:
        env = {**os.environ, "VAR_DIR": var, "DATABASE_URL": f"sqlite:///{var}/db.sqlite3", "ALLOWED_HOSTS": "*"}
        env.pop("DEBUG", None)
        manage = [sys.executable, "manage.py"]
        for args in (["migrate", "-v0"], ["collectstatic", "--noinput", "-v0"], ["seed_demo"], ["shell", "-c", SETUP]):
            subprocess.run(manage + args, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        port = free_port()
        server = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", "platform/gunicorn.conf.py",
                                   "--bind", f"127.0.0.1:{port}", "--workers", "2", "rlhf_platform.wsgi"],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(base + "/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                     args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1280, "height": 720}, base_url=base)
                shoot(page)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"screenshots written to {OUT}")


def shoot(page) -> None:
    def save(name: str, full_page: bool = False) -> None:
        page.wait_for_timeout(250)
        page.screenshot(path=str(OUT / f"{name}.png"), full_page=full_page)
        print("  ", name)

    page.goto("/accounts/login/")
    save("01-login")
    page.fill("#id_username", "demo-labeler-1")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/")
    save("02-home")

    oasst = page.locator("tr", has_text="OpenAssistant").locator("a[href$='/ranking/']").get_attribute("href")
    page.goto(oasst)
    page.keyboard.press("j")
    page.keyboard.press("2")
    page.keyboard.press("j")
    page.keyboard.press("1")
    save("03-ranking-partly-ranked", full_page=True)
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("3")
    page.keyboard.press("j")
    page.keyboard.press("t")
    page.check(".card.tie-last input[name=hallucination]")
    page.select_option(".card.tie-last select[name=quality]", "3")
    save("04-ranking-with-a-tie", full_page=True)
    page.keyboard.press("?")
    save("05-ranking-keyboard-help")
    page.keyboard.press("Escape")
    page.click("#skip-button")
    page.select_option("#skip-reason", "The prompt is unclear or broken")
    save("06-skip-with-reason")
    page.keyboard.press("Escape")

    page.goto("/")
    page.goto(page.locator("tr", has_text="HH-RLHF").locator("a[href$='/demonstration/']").get_attribute("href"))
    page.fill("#demo-text", "Some common Oregon butterflies:\n\n- **Western Tiger Swallowtail**\n- *Mourning Cloak*\n"
                            "- Painted Lady\n\n<script>alert('shown as text')</script>")
    page.wait_for_selector("#preview li")
    save("07-demonstration-with-preview")

    page.goto("/")
    page.goto(page.locator("tr", has_text="HH-RLHF").locator("a[href$='/write/']").get_attribute("href"))
    page.fill("#prompt-text", "What should I pack for a three-day hike in the Cascades in October?")
    page.fill("#prompt-tags", "outdoors, travel")
    save("08-prompt-writing")

    page.goto("/history/")
    save("09-history")
    page.click("a:has-text('Correct') >> nth=0")
    page.wait_for_selector("#progress:has-text('ranked')")
    save("10-correcting-a-ranking")
    page.context.clear_cookies()                      # the training pages are for project admins
    page.goto("/accounts/login/")
    page.fill("#id_username", "demo-admin")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/")
    page.goto(page.locator("tr", has_text="HH-RLHF").locator("a[href*='/manage/']").get_attribute("href"))
    save("12-training-rounds-and-jobs", full_page=True)
    page.locator("#jobs tr", has_text="PPO").locator("a").first.click()  # the PPO job
    page.wait_for_selector("#charts canvas")
    page.wait_for_timeout(800)
    save("13-training-job-charts", full_page=True)
    page.goto("/api/docs/")
    page.wait_for_selector(".swagger-ui .opblock", timeout=20000)
    save("11-api-docs")


if __name__ == "__main__":
    main()
