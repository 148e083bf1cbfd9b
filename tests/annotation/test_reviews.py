"""Review: reviewers accept, reject and edit labels; every action is audited; labelers see the decision,
cannot undo it, and ask for a change once a label is frozen (see tests/conftest.py for who everyone is:
alice and carol label A, rita reviews A, adam administers A, sam is staff, bob labels B, olga is nobody)."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from annotation import reviews, services
from annotation.loop.snapshots import create_snapshot, verify_snapshot
from annotation.models import AuditEvent, Demonstration, LabelRevision, Ranking, ReviewStatus
from tests.annotation.test_every_url import database_state
from tests.factories import best_first, demonstration_task, make_prompt, make_ranking_task


def _reversed(task) -> list[dict]:
    entries = list(reversed(best_first(task)))
    for i, e in enumerate(entries):
        e["rank"] = i + 1
    return entries


@pytest.fixture
def labels(project_a, users):
    """alice's ranking and demonstration, and a ranking rita (a reviewer who also labels) wrote herself."""
    task = make_ranking_task(project_a, "Rank these colours")
    ranking, _ = services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=5)
    demo_task = demonstration_task(make_prompt(project_a, "Explain tides."))
    demo, _ = services.submit_demonstration(author=users["alice"], task=demo_task, text="The moon pulls.",
                                            seconds_spent=7)
    own_task = make_ranking_task(project_a, "rita ranks this herself")
    ritas, _ = services.submit_ranking(labeler=users["rita"], task=own_task, entries=best_first(own_task),
                                       seconds_spent=3)
    return {"ranking": ranking, "demonstration": demo, "ritas": ritas}


@pytest.fixture
def browser_for(users):
    def make(name):
        client = Client()
        client.force_login(users[name])
        return client
    return make


def review(client, label, decision, **body):
    kind = "rankings" if isinstance(label, Ranking) else "demonstrations"
    return client.post(f"/api/{kind}/{label.pk}/review/", {"decision": decision, **body})


def events(action=None):
    rows = AuditEvent.objects.order_by("id")
    return list(rows.filter(action=action) if action else rows)


# --- Deciding ------------------------------------------------------------------------------------------------------


def test_a_reviewer_accepts_a_ranking_and_the_audit_log_says_who_what_and_which_revision(client_for, labels, users):
    ranking = labels["ranking"]
    response = review(client_for("rita"), ranking, "accept", revision=1)
    assert response.status_code == 200 and response.json()["review_status"] == "accepted"
    ranking.refresh_from_db()
    assert ranking.review_status == ReviewStatus.ACCEPTED
    (event,) = events()
    assert (event.actor, event.action, event.target_type, event.target_id) == (
        users["rita"], "review.accept", "annotation.ranking", ranking.pk)
    assert event.project == ranking.task.project
    assert event.detail == {"kind": "ranking", "revision": 1, "previous_status": "submitted"}


def test_a_rejection_needs_a_reason(client_for, labels):
    response = review(client_for("rita"), labels["ranking"], "reject", reason="   ")
    assert response.status_code == 400 and "reason" in response.json()["fields"]
    labels["ranking"].refresh_from_db()
    assert labels["ranking"].review_status == ReviewStatus.SUBMITTED and events() == []


def test_an_unknown_decision_is_a_field_error(client_for, labels):
    response = review(client_for("rita"), labels["ranking"], "maybe")
    assert response.status_code == 400 and "decision" in response.json()["fields"]


def test_a_rejection_keeps_its_reason_and_the_labeler_sees_both_in_the_api_and_the_history(client_for, labels, users):
    demo = labels["demonstration"]
    assert review(client_for("adam"), demo, "reject", reason="Off topic <b>really</b>").status_code == 200
    body = client_for("alice").get(f"/api/demonstrations/{demo.pk}/").json()
    assert (body["review_status"], body["review_note"]) == ("rejected", "Off topic <b>really</b>")
    assert events("review.reject")[0].reason == "Off topic <b>really</b>"
    page = Client()
    page.force_login(users["alice"])
    html = page.get("/history/?kind=demonstration").content.decode()
    assert "Rejected" in html and "Off topic &lt;b&gt;really&lt;/b&gt;" in html
    assert "Ask for a change" in html


def test_a_reviewer_may_change_a_decision_and_every_change_is_audited(client_for, labels):
    ranking = labels["ranking"]
    assert review(client_for("rita"), ranking, "accept").status_code == 200
    assert review(client_for("adam"), ranking, "reject", reason="ranks look random").status_code == 200
    assert review(client_for("rita"), ranking, "accept", reason="checked again").status_code == 200
    ranking.refresh_from_db()
    assert (ranking.review_status, ranking.review_note) == (ReviewStatus.ACCEPTED, "checked again")
    assert [(e.action, e.detail["previous_status"]) for e in events()] == [
        ("review.accept", "submitted"), ("review.reject", "accepted"), ("review.accept", "rejected")]


def test_the_same_decision_twice_is_recorded_once(client_for, labels):
    for _ in range(2):
        assert review(client_for("rita"), labels["ranking"], "accept").status_code == 200
    assert len(events()) == 1


def test_a_decision_on_a_revision_that_changed_since_is_refused(client_for, labels, users):
    ranking = labels["ranking"]
    services.correct_ranking(labeler=users["alice"], ranking=ranking, entries=_reversed(ranking.task), seconds_spent=1)
    response = review(client_for("rita"), ranking, "accept", revision=1)
    assert response.status_code == 409 and "revision 2" in response.json()["message"]
    ranking.refresh_from_db()
    assert ranking.review_status == ReviewStatus.SUBMITTED and events() == []


# --- Editing a demonstration ---------------------------------------------------------------------------------------


def test_a_reviewers_edit_is_a_new_revision_by_the_reviewer_and_the_original_stays(client_for, labels, users):
    demo = labels["demonstration"]
    response = client_for("rita").post(f"/api/demonstrations/{demo.pk}/edit/",
                                       {"text": "The moon's gravity pulls the oceans.", "reason": "more precise",
                                        "revision": 1})
    assert response.status_code == 200
    demo.refresh_from_db()
    assert (demo.text, demo.revision, demo.review_status, demo.review_note) == (
        "The moon's gravity pulls the oceans.", 2, ReviewStatus.ACCEPTED, "more precise")
    first, second = LabelRevision.objects.filter(demonstration=demo).order_by("number")
    assert (first.author, first.content) == (users["alice"], {"text": "The moon pulls."})
    assert (second.author, second.content) == (users["rita"], {"text": "The moon's gravity pulls the oceans."})
    (event,) = events()
    assert (event.action, event.reason, event.actor) == ("review.edit", "more precise", users["rita"])
    assert event.detail == {"kind": "demonstration", "revision": 2, "previous_revision": 1,
                            "previous_status": "submitted"}


def test_an_edit_needs_a_text_and_a_reason(client_for, labels):
    demo = labels["demonstration"]
    client = client_for("rita")
    for body, field in (({"text": " ", "reason": "why"}, "text"), ({"text": "New.", "reason": " "}, "reason")):
        response = client.post(f"/api/demonstrations/{demo.pk}/edit/", body)
        assert response.status_code == 400 and list(response.json()["fields"]) == [field]
    response = client.post(f"/api/demonstrations/{demo.pk}/edit/", {"text": "The moon pulls.", "reason": "same"})
    assert response.status_code == 400 and "accept it instead" in response.json()["fields"]["text"][0]
    demo.refresh_from_db()
    assert demo.revision == 1 and events() == []


def test_an_edit_of_a_label_without_a_revision_row_keeps_the_original_text(client_for, labels, users):
    """A label written around the services has no revision row; the edit must not leave the reviewer's text as
    the only copy."""
    demo = labels["demonstration"]
    LabelRevision.objects.filter(demonstration=demo).delete()
    response = client_for("rita").post(f"/api/demonstrations/{demo.pk}/edit/", {"text": "Better.", "reason": "x"})
    assert response.status_code == 200
    revisions = LabelRevision.objects.filter(demonstration=demo).order_by("number")
    assert [(r.number, r.author.username, r.content["text"]) for r in revisions] == [
        (1, "alice", "The moon pulls."), (2, "rita", "Better.")]


def test_the_editor_does_not_then_decide_on_their_own_text(client_for, labels):
    demo = labels["demonstration"]
    client_for("rita").post(f"/api/demonstrations/{demo.pk}/edit/", {"text": "Better.", "reason": "clearer"})
    assert review(client_for("rita"), demo, "reject", reason="hmm").status_code == 403
    assert review(client_for("adam"), demo, "reject", reason="too short now").status_code == 200


# --- Who may do what -----------------------------------------------------------------------------------------------

ROLES = [None, "olga", "bob", "carol", "alice", "rita", "adam", "sam"]
DECIDE = {None: 401, "olga": 404, "bob": 404, "carol": 404, "alice": 403, "rita": 200, "adam": 200, "sam": 200}


@pytest.mark.parametrize("who", ROLES)
@pytest.mark.parametrize("kind", ["ranking", "demonstration"])
def test_who_may_review_a_label(client_for, labels, who, kind):
    label = labels[kind]
    response = review(client_for(who), label, "reject", reason="not good")
    assert response.status_code == DECIDE[who]
    label.refresh_from_db()
    expected = ReviewStatus.REJECTED if DECIDE[who] == 200 else ReviewStatus.SUBMITTED
    assert label.review_status == expected and len(events()) == (1 if DECIDE[who] == 200 else 0)


@pytest.mark.parametrize("who", ROLES)
def test_who_may_edit_a_demonstration(client_for, labels, who):
    demo = labels["demonstration"]
    response = client_for(who).post(f"/api/demonstrations/{demo.pk}/edit/", {"text": "Edited.", "reason": "why"})
    assert response.status_code == DECIDE[who]
    demo.refresh_from_db()
    assert demo.revision == (2 if DECIDE[who] == 200 else 1)


@pytest.mark.parametrize("who, status", [("rita", 403), ("adam", 200), ("sam", 200)])
def test_nobody_reviews_their_own_label(client_for, labels, who, status):
    """rita is a reviewer who labeled too: someone else decides on her ranking."""
    assert review(client_for(who), labels["ritas"], "accept").status_code == status


@pytest.mark.parametrize("who, status", [(None, 401), ("olga", 404), ("bob", 404), ("carol", 403), ("alice", 403),
                                         ("rita", 200), ("adam", 200), ("sam", 200)])
def test_who_may_read_the_review_queue(client_for, labels, project_a, who, status):
    assert client_for(who).get(f"/api/projects/{project_a.pk}/review-queue/").status_code == status


REQUEST = {None: 401, "olga": 404, "bob": 404, "carol": 404, "alice": 201, "rita": 403, "adam": 403, "sam": 403}


@pytest.mark.parametrize("who", ROLES)
@pytest.mark.parametrize("kind", ["ranking", "demonstration"])
def test_who_may_ask_for_a_change(client_for, labels, who, kind):
    label = labels[kind]
    review(client_for("adam"), label, "reject", reason="wrong")  # frozen now
    path = f"/api/{kind}s/{label.pk}/request-change/"
    assert client_for(who).post(path, {"message": "please look again"}).status_code == REQUEST[who]
    assert len(events("review.change_requested")) == (1 if REQUEST[who] == 201 else 0)


# --- The labeler cannot undo a review --------------------------------------------------------------------------------


def test_a_labeler_can_neither_review_nor_correct_a_reviewed_label(client_for, labels):
    ranking = labels["ranking"]
    review(client_for("rita"), ranking, "reject", reason="ties everywhere")
    alice = client_for("alice")
    assert review(alice, ranking, "accept").status_code == 403
    assert alice.post(f"/api/rankings/{ranking.pk}/correct/",
                      {"entries": _reversed(ranking.task), "seconds_spent": 1}).status_code == 409
    assert alice.patch(f"/api/rankings/{ranking.pk}/", {"review_status": "accepted"}).status_code == 405
    ranking.refresh_from_db()
    assert (ranking.review_status, ranking.revision) == (ReviewStatus.REJECTED, 1)


# --- Change requests -------------------------------------------------------------------------------------------------


def test_a_change_request_is_audited_shown_in_the_queue_and_answered_by_the_next_review(client_for, labels,
                                                                                         project_a, users):
    ranking = labels["ranking"]
    review(client_for("rita"), ranking, "reject", reason="ties everywhere")
    path = f"/api/rankings/{ranking.pk}/request-change/"
    first = client_for("alice").post(path, {"message": "I meant the ties: see the guidelines"})
    assert first.status_code == 201 and first.json()["message"] == "I meant the ties: see the guidelines"
    retry = client_for("alice").post(path, {"message": "I meant the ties: see the guidelines"})
    assert retry.status_code == 200 and retry.json()["id"] == first.json()["id"]
    (event,) = events("review.change_requested")
    assert (event.actor, event.target_id, event.detail["review_status"]) == (users["alice"], ranking.pk, "rejected")

    queue = f"/api/projects/{project_a.pk}/review-queue/?kind=ranking&status=all&change_requested=true"
    items = client_for("rita").get(queue).json()["results"]
    assert [i["id"] for i in items] == [ranking.pk]
    assert items[0]["change_requests"][0]["open"] is True

    review(client_for("adam"), ranking, "accept", reason="ties are fine here")
    assert client_for("rita").get(queue).json()["results"] == []
    item = client_for("rita").get(f"/api/projects/{project_a.pk}/review-queue/?status=accepted").json()["results"][0]
    assert item["change_requests"][0]["open"] is False


def test_the_review_page_shows_open_change_requests(client_for, browser_for, labels, project_a):
    demo = labels["demonstration"]
    review(client_for("rita"), demo, "reject", reason="too short")
    client_for("alice").post(f"/api/demonstrations/{demo.pk}/request-change/", {"message": "It <i>is</i> complete."})
    html = browser_for("adam").get(f"/review/{project_a.pk}/?kind=demonstration&status=all&change_requested=1")
    html = html.content.decode()
    assert f'data-label-id="{demo.pk}"' in html and '<li class="open">' in html
    assert "It &lt;i&gt;is&lt;/i&gt; complete." in html and "too short" in html


def test_the_same_decision_again_answers_an_open_change_request(client_for, labels):
    ranking = labels["ranking"]
    review(client_for("rita"), ranking, "reject", reason="ties everywhere")
    client_for("alice").post(f"/api/rankings/{ranking.pk}/request-change/", {"message": "please"})
    assert review(client_for("rita"), ranking, "reject", reason="ties everywhere").status_code == 200
    assert len(events("review.reject")) == 2 and reviews.open_change_requests("ranking", [ranking]) == set()


def test_a_label_that_can_still_be_corrected_needs_no_change_request(client_for, labels):
    response = client_for("alice").post(f"/api/rankings/{labels['ranking'].pk}/request-change/", {"message": "x"})
    assert response.status_code == 409 and "correct" in response.json()["message"]
    assert events() == []


def test_a_change_request_needs_a_message(client_for, labels):
    review(client_for("rita"), labels["ranking"], "accept")
    response = client_for("alice").post(f"/api/rankings/{labels['ranking'].pk}/request-change/", {"message": ""})
    assert response.status_code == 400 and "message" in response.json()["fields"]


# --- Snapshots -------------------------------------------------------------------------------------------------------


def test_a_rejected_label_is_left_out_of_the_next_snapshot_and_earlier_ones_never_change(client_for, labels,
                                                                                         project_a, settings, tmp_path):
    settings.ARTIFACT_ROOT = str(tmp_path)
    ranking, demo = labels["ranking"], labels["demonstration"]
    before = create_snapshot(project=project_a)
    assert ranking.pk in before.ranking_ids and demo.pk in before.demonstration_ids
    assert review(client_for("rita"), ranking, "reject", reason="random").status_code == 200
    edited = client_for("rita").post(f"/api/demonstrations/{demo.pk}/edit/", {"text": "Gravity.", "reason": "x"})
    assert edited.status_code == 200
    after = create_snapshot(project=project_a)
    assert after.pk != before.pk
    assert ranking.pk not in after.ranking_ids and after.label_revisions["demonstration"][str(demo.pk)] == 2
    exported = "".join((Path(after.path) / name).read_text() for name in ("sft.jsonl", "sft_eval.jsonl"))
    assert "Gravity." in exported
    before.refresh_from_db()
    assert ranking.pk in before.ranking_ids and before.label_revisions["demonstration"][str(demo.pk)] == 1
    assert verify_snapshot(before) and verify_snapshot(after)


def test_a_label_rejected_before_any_snapshot_never_enters_one(client_for, labels, project_a, settings, tmp_path):
    settings.ARTIFACT_ROOT = str(tmp_path)
    review(client_for("rita"), labels["demonstration"], "reject", reason="copied from the web")
    assert labels["demonstration"].pk not in create_snapshot(project=project_a).demonstration_ids


# --- The queue -------------------------------------------------------------------------------------------------------


def test_the_queue_lists_waiting_labels_oldest_first_with_what_a_reviewer_needs(client_for, labels, project_a, users):
    task = make_ranking_task(project_a, "a later one")
    later, _ = services.submit_ranking(labeler=users["carol"], task=task, entries=best_first(task), seconds_spent=2)
    body = client_for("rita").get(f"/api/projects/{project_a.pk}/review-queue/?kind=ranking").json()
    assert body["count"] == 2 and [i["id"] for i in body["results"]] == [labels["ranking"].pk, later.pk]
    item = body["results"][0]  # rita's own ranking is left out: someone else reviews it
    assert (item["kind"], item["labeler_name"], item["revision"], item["review_status"]) == (
        "ranking", "alice", 1, "submitted")
    assert item["prompt"]["text"] == "Rank these colours" and item["is_gold"] is False
    assert [r["rank"] for r in item["responses"]] == [1, 2, 3, 4] and item["text"] is None
    assert [r["number"] for r in item["responses"]] == [1, 2, 3, 4]  # best_first ranks in display order
    assert [r["author_name"] for r in item["revisions"]] == ["alice"] and item["change_requests"] == []
    assert client_for("adam").get(f"/api/projects/{project_a.pk}/review-queue/?kind=ranking").json()["count"] == 3

    demos = client_for("rita").get(f"/api/projects/{project_a.pk}/review-queue/?kind=demonstration").json()
    assert [(i["id"], i["text"], i["responses"]) for i in demos["results"]] == [
        (labels["demonstration"].pk, "The moon pulls.", [])]


def test_the_queue_filters_by_status_and_reviewed_labels_leave_the_waiting_queue(client_for, labels, project_a):
    review(client_for("rita"), labels["ranking"], "reject", reason="no")
    url = f"/api/projects/{project_a.pk}/review-queue/"
    assert client_for("rita").get(url).json()["count"] == 0
    assert [i["id"] for i in client_for("rita").get(url + "?status=rejected").json()["results"]] == [
        labels["ranking"].pk]
    assert client_for("rita").get(url + "?status=all").json()["count"] == 1


@pytest.mark.parametrize("query", ["kind=prompt_writing", "status=maybe", "change_requested=perhaps"])
def test_a_bad_queue_query_is_a_field_error(client_for, project_a, query):
    response = client_for("rita").get(f"/api/projects/{project_a.pk}/review-queue/?{query}")
    assert response.status_code == 400 and query.split("=")[0] in response.json()["fields"]


def _queue_queries(client, project) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(f"/api/projects/{project.pk}/review-queue/?kind=ranking").status_code == 200
    return len(queries)


def test_the_queue_runs_the_same_number_of_queries_for_one_label_or_many(client_for, labels, project_a, users):
    client = client_for("rita")
    one = _queue_queries(client, project_a)
    project_a.overlap = 3
    project_a.save()
    for _ in range(4):
        task = make_ranking_task(project_a)
        for name in ("alice", "carol"):
            services.submit_ranking(labeler=users[name], task=task, entries=best_first(task), seconds_spent=1)
    assert _queue_queries(client, project_a) == one


def test_agreement_and_gold_results_come_from_the_quality_hook(client_for, labels, project_a, monkeypatch):
    class Quality:
        @staticmethod
        def review_signals(*, kind, labels):
            return {label.pk: {"kendall_w": 0.5, "gold_accuracy": None} for label in labels}

    monkeypatch.setattr(reviews, "quality", Quality)
    item = client_for("rita").get(f"/api/projects/{project_a.pk}/review-queue/").json()["results"][0]
    assert item["quality"] == {"kendall_w": 0.5, "gold_accuracy": None}
    monkeypatch.setattr(reviews, "quality", None)  # before annotation.quality existed
    assert client_for("rita").get(f"/api/projects/{project_a.pk}/review-queue/").json()["results"][0]["quality"] is None


def test_the_queue_and_the_page_show_agreement_with_the_other_labelers(client_for, browser_for, project_a, users):
    project_a.overlap = 2
    project_a.save()
    task = make_ranking_task(project_a, "two labelers")
    for name, entries in (("alice", best_first(task)), ("carol", _reversed(task))):
        services.submit_ranking(labeler=users[name], task=task, entries=entries, seconds_spent=1)
    item = client_for("rita").get(f"/api/projects/{project_a.pk}/review-queue/").json()["results"][0]
    assert item["quality"]["agreement"]["others"] == 1 and item["quality"]["task"]["rankings"] == 2
    html = browser_for("rita").get(f"/review/{project_a.pk}/").content.decode()
    assert "Kendall's W" in html and "consensus of 1 other" in html


# --- The review page -------------------------------------------------------------------------------------------------


def test_the_review_page_shows_one_label_and_renders_model_output_safely(browser_for, project_a, users):
    task = make_ranking_task(project_a, "Say **hi**", ["<script>alert(1)</script>", "[x](javascript:alert(1))",
                                                      "fine", "also fine"])
    services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=1)
    html = browser_for("rita").get(f"/review/{project_a.pk}/").content.decode()
    assert "<strong>hi</strong>" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html and "javascript:" not in html
    assert 'data-kind="ranking"' in html and "1 of 1" in html and "alice" in html


def test_the_review_panel_steps_through_the_queue(browser_for, labels, project_a, users):
    task = make_ranking_task(project_a, "the second one")
    later, _ = services.submit_ranking(labeler=users["carol"], task=task, entries=best_first(task), seconds_spent=2)
    client = browser_for("rita")
    panel = f"/review/{project_a.pk}/panel/?kind=ranking&status=submitted"
    assert f'data-label-id="{later.pk}"' in client.get(f"{panel}&after={labels['ranking'].pk}").content.decode()
    assert f'data-label-id="{labels["ranking"].pk}"' in client.get(f"{panel}&before={later.pk}").content.decode()
    assert "No more labels" in client.get(f"{panel}&after={later.pk}").content.decode()


@pytest.mark.parametrize("who, status", [("alice", 403), ("bob", 404), ("olga", 404), ("rita", 200), ("adam", 200),
                                         ("sam", 200)])
def test_who_may_open_the_review_page(browser_for, project_a, project_b, who, status):
    for path in (f"/review/{project_a.pk}/", f"/review/{project_a.pk}/panel/"):
        assert browser_for(who).get(path).status_code == status


def test_the_review_page_needs_a_login(project_a):
    response = Client().get(f"/review/{project_a.pk}/")
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")


def test_the_home_page_links_reviewers_to_the_queue(browser_for, labels, project_a):
    assert f"/review/{project_a.pk}/" in browser_for("rita").get("/").content.decode()
    assert f"/review/{project_a.pk}/" not in browser_for("alice").get("/").content.decode()


@pytest.mark.parametrize("who", ["rita", "alice", "sam"])
def test_a_get_on_any_review_url_changes_nothing(browser_for, client_for, labels, project_a, who):
    review(client_for("adam"), labels["demonstration"], "reject", reason="wrong")
    client_for("alice").post(f"/api/demonstrations/{labels['demonstration'].pk}/request-change/", {"message": "why?"})
    client, api = browser_for(who), client_for(who)  # (logging in writes a row)
    before = database_state()
    for path in (f"/review/{project_a.pk}/", f"/review/{project_a.pk}/panel/?kind=demonstration&status=all",
                 "/history/?kind=demonstration", "/"):
        client.get(path)
    demo = labels["demonstration"].pk
    for path in (f"/api/projects/{project_a.pk}/review-queue/?status=all&change_requested=1",
                 f"/api/rankings/{labels['ranking'].pk}/review/", f"/api/demonstrations/{demo}/edit/",
                 f"/api/demonstrations/{demo}/request-change/"):
        assert api.get(path).status_code in (200, 403, 405)
    assert database_state() == before
    assert Demonstration.objects.get().review_status == ReviewStatus.REJECTED


def test_the_django_admin_accepts_through_the_review_rules_and_cannot_edit_labels(users, project_a):
    task = make_ranking_task(project_a)
    ranking, _ = services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=1)
    users["sam"].is_superuser = True
    users["sam"].save()
    client = Client()
    client.force_login(users["sam"])
    response = client.post("/admin/annotation/ranking/", {"action": "accept", "_selected_action": [ranking.pk]})
    assert response.status_code == 302
    ranking.refresh_from_db()
    assert ranking.review_status == ReviewStatus.ACCEPTED
    assert AuditEvent.objects.filter(action="review.accept", target_id=ranking.pk, actor_name="sam").exists()
    page = client.get(f"/admin/annotation/ranking/{ranking.pk}/change/")
    assert page.status_code == 200 and 'name="review_status"' not in page.content.decode()  # view only
