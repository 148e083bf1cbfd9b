"""A labeler's day in a real browser. After each step the database holds exactly what was entered."""
from __future__ import annotations

import pytest

from annotation import services
from annotation.models import Demonstration, Ranking, RankingEntry, Skip, TaskSlot
from tests.factories import best_first, demonstration_task, make_prompt, make_ranking_task

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def card_ids(page) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all("#cards .card", "cards => cards.map(c => c.dataset.candidate)")]


def wait_for_toast(page, text: str):
    page.wait_for_selector(f"#toast:not([hidden]) >> text={text}")


def test_a_labeler_logs_in_and_sees_what_waits_for_her(login, project_a):
    make_ranking_task(project_a)
    make_prompt(project_a, "only a demonstration")
    page = login("alice")
    row = page.locator("table.projects tr", has_text="A")
    assert row.locator("a[href$='/ranking/']").inner_text().split()[-1] == "1"
    assert row.locator("a[href$='/demonstration/']").inner_text().split()[-1] == "2"
    assert page.problems == []


def test_writing_a_demonstration_stores_exactly_the_text(login, project_a, users):
    task = demonstration_task(make_prompt(project_a, "Explain **photosynthesis** in one sentence."))
    make_prompt(project_a, "A second prompt waiting")
    page = login("alice")
    page.goto(f"/p/{project_a.pk}/demonstration/")
    page.wait_for_selector("#task-panel:not(.claiming)")  # the page POSTs for its task
    assert page.locator(".prompt strong", has_text="photosynthesis").count() == 1
    page.evaluate("window.__sameDocument = true")
    answer = "Plants turn *light*, water and CO2 into sugar and oxygen."
    page.fill("#demo-text", answer)
    page.wait_for_selector("#preview em >> text=light")
    assert page.inner_text("#char-count") == f"{len(answer)} characters"
    page.keyboard.press("Control+Enter")
    wait_for_toast(page, "Demonstration submitted")
    page.wait_for_selector("#task-panel:has-text('A second prompt waiting')")
    assert page.evaluate("window.__sameDocument") is True, "the next task must load without a page reload"
    demo = Demonstration.objects.get()
    assert (demo.task_id, demo.author, demo.text) == (task.pk, users["alice"], answer)
    assert 0 < demo.seconds_spent < 120
    assert page.problems == []


def test_a_demonstration_draft_survives_a_reload(login, project_a):
    make_prompt(project_a, "Draft me")
    page = login("alice")
    page.goto(f"/p/{project_a.pk}/demonstration/")
    page.wait_for_selector("#task-panel:not(.claiming)")  # the page POSTs for its task
    page.fill("#demo-text", "half-written answer")
    page.reload()
    assert page.input_value("#demo-text") == "half-written answer"
    assert "draft restored" in page.inner_text("#draft-state")
    assert Demonstration.objects.count() == 0


def test_ranking_four_responses_with_the_keyboard_only(login, project_a, users):
    task = make_ranking_task(project_a, "Name a colour", ["red", "green", "blue", "purple"])
    page = login("alice")
    page.goto(f"/p/{project_a.pk}/ranking/")
    page.wait_for_selector("#task-panel:not(.claiming)")  # the page POSTs for its task
    a, b, c, d = card_ids(page)
    page.keyboard.press("j")          # focus the first card (a)
    page.keyboard.press("3")          # a → rank 3 (moves to the top of the list while others are unranked)
    page.keyboard.press("j")          # b
    page.keyboard.press("1")          # b → 1
    page.keyboard.press("j")          # a (order: b, a, c, d)
    page.keyboard.press("j")          # c
    page.keyboard.press("2")          # c → 2 (order: b, c, a, d)
    page.keyboard.press("j")          # a
    page.keyboard.press("j")          # d
    assert page.is_disabled("#submit-button")
    page.keyboard.press("4")          # d → 4: all ranked
    for _ in range(6):                # Tab through d's controls to its "hallucination" flag
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.name") == "hallucination":
            break
    page.keyboard.press("Space")
    assert card_ids(page) == [b, c, a, d]
    assert page.is_enabled("#submit-button")
    page.keyboard.press("Control+Enter")
    wait_for_toast(page, "Ranking submitted")
    ranking = Ranking.objects.get()
    assert (ranking.task_id, ranking.labeler) == (task.pk, users["alice"])
    assert ranking.ranks() == {b: 1, c: 2, a: 3, d: 4}
    assert list(RankingEntry.objects.filter(hallucination=True).values_list("candidate_id", flat=True)) == [d]
    assert RankingEntry.objects.filter(fails_instruction=True).count() == 0
    page.wait_for_selector("#task-panel.empty")
    assert page.problems == []


def test_the_help_lists_the_keys(login, project_a):
    make_ranking_task(project_a)
    page = login("alice")
    page.goto(f"/p/{project_a.pk}/ranking/")
    page.wait_for_selector("#task-panel:not(.claiming)")  # the page POSTs for its task
    page.keyboard.press("?")
    assert page.is_visible("#help-dialog") and "tie the focused response" in page.inner_text("#help-dialog")


def drag(page, source, target):
    """Drag `source`'s handle just above `target` with real pointer moves (SortableJS pointer mode)."""
    page.eval_on_selector("#cards", "list => list.scrollIntoView({block: 'start'})")
    start = page.locator(source).bounding_box()
    end = page.locator(target).bounding_box()
    x, y = start["x"] + 12, start["y"] + start["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 31):
        page.mouse.move(x, y + (end["y"] - 10 - y) * step / 30)
        page.wait_for_timeout(20)
    page.mouse.up()
    page.wait_for_timeout(300)


def test_ranking_five_responses_by_drag_and_drop_with_one_tie(login, users):
    from annotation.models import Role
    from tests.factories import make_project

    project = make_project("five", k=5, members={users["alice"]: Role.LABELER})
    task = make_ranking_task(project, "Pick a fruit", ["apple", "banana", "cherry", "date", "elderberry"])
    page = login("alice")
    page.goto(f"/p/{project.pk}/ranking/")
    page.wait_for_selector("#task-panel:not(.claiming)")  # the page POSTs for its task
    first, second, third, fourth, fifth = card_ids(page)
    drag(page, f'.card[data-candidate="{fifth}"] .card-head', f'.card[data-candidate="{first}"] .card-head')
    assert card_ids(page) == [fifth, first, second, third, fourth]
    page.click(f'.card[data-candidate="{second}"] .tie-button')   # tie `second` with `first` above it
    assert page.locator(".card.tied").count() == 2
    assert page.inner_text(f'.card[data-candidate="{second}"] .rank-badge') == "2"
    page.click("#submit-button")
    wait_for_toast(page, "Ranking submitted")
    ranking = Ranking.objects.get(task=task)
    assert ranking.ranks() == {fifth: 1, first: 2, second: 2, third: 3, fourth: 4}
    assert Ranking.objects.count() == 1 and page.problems == []


def test_skipping_then_undoing_loses_nothing(login, project_a, users):
    first = make_ranking_task(project_a, "first task")
    second = make_ranking_task(project_a, "second task")
    page = login("alice")
    page.goto(f"/p/{project_a.pk}/ranking/")
    page.wait_for_selector("#task-panel:not(.claiming)")  # the page POSTs for its task
    assert int(page.get_attribute("#task-panel", "data-task-id")) == first.pk
    page.keyboard.press("j")
    page.keyboard.press("1")
    page.click("#skip-button")
    page.select_option("#skip-reason", "I lack the expertise to judge it")
    page.click("#skip-confirm")
    page.wait_for_selector(f'#task-panel[data-task-id="{second.pk}"]')
    skip = Skip.objects.get()
    assert (skip.task_id, skip.labeler, skip.reason) == (first.pk, users["alice"], "I lack the expertise to judge it")
    assert TaskSlot.objects.get(task=second).labeler == users["alice"]
    page.click("#toast-action")                                     # Undo
    page.wait_for_selector(f'#task-panel[data-task-id="{first.pk}"]')
    wait_for_toast(page, "Skip undone")
    assert Skip.objects.count() == 0
    assert TaskSlot.objects.get(task=first).labeler == users["alice"]
    assert TaskSlot.objects.get(task=second).status == TaskSlot.Status.FREE
    assert Ranking.objects.count() == 0 and page.problems == []


def test_correcting_a_past_ranking_replaces_it(login, project_a, users):
    task = make_ranking_task(project_a, "Correct me later")
    ranking, _ = services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=7)
    page = login("alice")
    page.goto("/history/")
    page.click(f'a[href="/history/ranking/{ranking.pk}/"]')
    page.wait_for_url(f"**/history/ranking/{ranking.pk}/")
    page.wait_for_selector("#progress:has-text('4 of 4 ranked')")
    ids = card_ids(page)
    assert [int(page.inner_text(f'.card[data-candidate="{i}"] .rank-badge')) for i in ids] == [1, 2, 3, 4]
    page.focus(f'.card[data-candidate="{ids[3]}"]')
    page.keyboard.press("1")                                        # the worst becomes the best
    page.fill("#comment", "changed my mind")
    page.click("#submit-button")
    page.wait_for_url("**/history/?kind=ranking")
    ranking.refresh_from_db()
    assert Ranking.objects.count() == 1 and RankingEntry.objects.count() == 4
    ranks = ranking.ranks()
    assert ranks[ids[3]] == 1 and sorted(ranks.values()) == [1, 2, 3, 4]
    assert ranking.comment == "changed my mind" and ranking.seconds_spent > 7
    task.refresh_from_db()
    assert task.done_count == 1 and page.problems == []


def test_a_labeler_cannot_open_another_projects_task(login, project_b):
    task = make_ranking_task(project_b)
    page = login("alice")
    assert page.goto(f"/p/{project_b.pk}/ranking/").status == 404
    status = page.evaluate(f"fetch('/api/tasks/{task.pk}/').then(r => r.status)")
    assert status == 404
    assert TaskSlot.objects.filter(labeler__isnull=False).count() == 0


def test_a_labeler_changes_her_password_logs_out_and_back_in(login, project_a, users):
    page = login("alice")
    page.click("nav >> text=Password")
    page.fill("#id_old_password", "pw")
    page.fill("#id_new_password1", "a-much-longer-passphrase-7")
    page.fill("#id_new_password2", "a-much-longer-passphrase-7")
    page.click("button:has-text('Change password')")
    page.wait_for_selector("text=Password changed")
    page.click("button:has-text('Log out')")
    page.wait_for_url("**/accounts/login/")
    assert page.goto("/").url.endswith("/accounts/login/?next=/")   # logged out for real
    users["alice"].refresh_from_db()
    assert users["alice"].check_password("a-much-longer-passphrase-7")
    login("alice", "a-much-longer-passphrase-7")
    assert page.locator("h1", has_text="Hello, alice").count() == 1
