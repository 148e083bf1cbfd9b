"""A reviewer's queue in a real browser, keyboard only, then the labeler's side: after each step the database
holds exactly the decision taken, and the next label arrived without a page reload."""
from __future__ import annotations

import pytest

from annotation import services
from annotation.models import AuditEvent, Demonstration, LabelRevision, Ranking, ReviewStatus
from tests.factories import best_first, demonstration_task, make_prompt, make_ranking_task

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def wait_for_toast(page, text: str):
    page.wait_for_selector(f"#toast:not([hidden]) >> text={text}")


def log_in_as(login, page, name: str):
    page.context.clear_cookies()  # a fresh session: log the previous user out
    login(name)
    page.wait_for_selector(f"h1:has-text('Hello, {name}')")  # the login page's own URL also ends in "/"


def test_a_reviewer_accepts_rejects_and_edits_by_keyboard_and_the_labeler_sees_it(login, page, project_a, users):
    blocked = []  # what the Content-Security-Policy refused (an inline script or style would be)
    page.on("console", lambda message: "Content Security Policy" in message.text and blocked.append(message.text))
    rankings = []
    for prompt in ("First prompt", "Second prompt"):
        task = make_ranking_task(project_a, prompt, ["<script>window.__xss = 1</script>", "**bold**", "c", "d"])
        rankings.append(services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task),
                                                seconds_spent=3)[0])
    first, second = rankings
    demo_task = demonstration_task(make_prompt(project_a, "Explain tides."))
    demo, _ = services.submit_demonstration(author=users["alice"], task=demo_task, text="The moon.", seconds_spent=4)

    log_in_as(login, page, "rita")
    page.click(f"a[href='/review/{project_a.pk}/']")
    page.wait_for_url(f"**/review/{project_a.pk}/")  # the load event: the page's script is listening for keys
    page.wait_for_selector(f'#task-panel[data-label-id="{first.pk}"]')
    assert page.locator(".review-card strong", has_text="bold").count() == 1  # sanitized markdown, not raw HTML
    assert page.locator(".review-card script").count() == 0
    page.evaluate("window.__sameDocument = true")

    page.keyboard.press("a")                                             # accept the first ranking
    wait_for_toast(page, "Accepted.")
    page.wait_for_selector(f'#task-panel[data-label-id="{second.pk}"]')
    first.refresh_from_db()
    assert first.review_status == ReviewStatus.ACCEPTED

    page.keyboard.press("r")                                             # reject the second, with a reason
    page.wait_for_selector("#reject-dialog[open]")
    page.fill("#reject-reason", "Response 1 is broken markup; it cannot be best.")
    page.click("#reject-confirm")
    wait_for_toast(page, "Rejected.")
    page.wait_for_selector("#task-panel.empty")
    second.refresh_from_db()
    assert (second.review_status, second.review_note) == (
        ReviewStatus.REJECTED, "Response 1 is broken markup; it cannot be best.")
    page.keyboard.press("k")                                             # back to the last one still waiting: none
    page.wait_for_timeout(200)
    assert page.locator("#task-panel.empty").count() == 1
    assert page.evaluate("window.__sameDocument") is True, "the next label must load without a page reload"

    page.goto(f"/review/{project_a.pk}/?kind=demonstration")
    page.wait_for_selector(f'#task-panel[data-label-id="{demo.pk}"]')
    page.keyboard.press("?")
    assert "edit a demonstration" in page.inner_text("#help-dialog")
    page.keyboard.press("Escape")
    page.keyboard.press("e")                                             # edit: a new revision by rita
    page.wait_for_selector("#edit-area:not([hidden])")
    page.fill("#edit-text", "The moon's gravity raises the tides.")
    page.fill("#edit-reason", "Say what the moon does.")
    page.focus("#edit-text")
    page.keyboard.press("Control+Enter")
    wait_for_toast(page, "Edited and accepted.")
    page.wait_for_selector("#task-panel.empty")
    demo.refresh_from_db()
    assert (demo.text, demo.revision, demo.review_status) == (
        "The moon's gravity raises the tides.", 2, ReviewStatus.ACCEPTED)
    assert list(LabelRevision.objects.filter(demonstration=demo).order_by("number")
                .values_list("author__username", "content")) == [
        ("alice", {"text": "The moon."}), ("rita", {"text": "The moon's gravity raises the tides."})]
    assert [e.action for e in AuditEvent.objects.order_by("id")] == ["review.accept", "review.reject", "review.edit"]
    assert page.evaluate("window.__xss") is None

    log_in_as(login, page, "alice")  # the labeler reads the decision
    page.goto("/history/?kind=ranking")
    row = page.locator("table.history tr", has_text="Second prompt")
    assert "Rejected" in row.inner_text() and "cannot be best" in row.inner_text()
    row.locator("[data-request-change]").click()
    page.wait_for_selector("#change-dialog[open]")
    page.fill("#change-message", "Response 1 renders fine for me; please look again.")
    page.click("#change-confirm")
    wait_for_toast(page, "Your request went to the reviewers.")
    assert "change requested" in row.inner_text()
    request = AuditEvent.objects.get(action="review.change_requested")
    assert (request.actor, request.target_id, request.reason) == (
        users["alice"], second.pk, "Response 1 renders fine for me; please look again.")
    assert Ranking.objects.get(pk=second.pk).review_status == ReviewStatus.REJECTED  # a request changes nothing
    assert Demonstration.objects.get().review_status == ReviewStatus.ACCEPTED

    log_in_as(login, page, "rita")  # the request waits in the queue
    page.goto(f"/review/{project_a.pk}/?kind=ranking&status=all&change_requested=1")
    page.wait_for_selector(f'#task-panel[data-label-id="{second.pk}"] .change-requests li.open')
    assert page.problems == [] and blocked == []
