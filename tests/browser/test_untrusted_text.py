"""Model output is untrusted: XSS payloads in candidates and prompts render as text and run nothing."""
from __future__ import annotations

import pytest

from tests.factories import make_ranking_task

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAYLOADS = [
    "<script>window.__xss = 'script'; alert('script')</script>",
    "<img src=x onerror=\"window.__xss = 'img'; alert('img')\">",
    "[click me](javascript:window.__xss='link';alert('link'))",
    "<a href=\"javascript:alert('raw-link')\">raw link</a> <svg onload=\"alert('svg')\"></svg>",
]


def test_xss_payloads_show_as_text_and_run_no_script(login, project_a):
    make_ranking_task(project_a, "<b onmouseover=alert('prompt')>prompt</b> <script>alert('prompt')</script>", PAYLOADS)
    page = login("alice")
    page.goto(f"/p/{project_a.pk}/ranking/")
    page.wait_for_selector("#task-panel:not(.claiming)")  # the page POSTs for its task
    page.wait_for_selector("#cards .card")
    page.hover(".prompt")
    page.click("#cards a:has-text('click me')")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    assert page.problems == []                       # no alert/confirm dialog opened, no page error
    assert page.locator("#cards img, #cards script, #cards svg, .prompt script, .prompt b").count() == 0
    assert page.locator("#cards a[href^='javascript']").count() == 0
    text = page.inner_text("#cards")
    assert "<script>window.__xss = 'script'" in text and '<img src=x onerror="window.__xss' in text
    assert "<script>alert('prompt')</script>" in page.inner_text(".prompt")
    csp = page.evaluate("fetch(location.href).then(r => r.headers.get('content-security-policy'))")
    assert "script-src 'self'" in csp
