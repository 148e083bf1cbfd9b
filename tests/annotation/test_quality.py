"""Quality: agreement per task, per round and with the others (leave-one-out), gold tasks (marking, mixing
into the queue, accuracy, snapshots), position bias, and who may read them.

Users (tests/conftest.py): alice and carol label project A; dora (made here) labels A too, for a third
ranking; rita reviews A; adam administers A; sam is a site admin; bob labels project B and olga no project:
both must get 404.
"""
from __future__ import annotations

import json
import math
import threading
from collections import Counter

import pytest
from django.db import connection, connections
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext

from annotation import gold, quality, services, stats
from annotation.admin import TaskAdmin, TaskAdminForm
from annotation.agreement import chance_test, first_shown_credit, pairwise_accuracy
from annotation.api.serializers import TaskSerializer
from annotation.loop.snapshots import create_snapshot
from annotation.models import (
    AuditEvent,
    Membership,
    Project,
    Ranking,
    ReviewStatus,
    Role,
    Round,
    Task,
    TaskKind,
    TaskSlot,
)
from tests.factories import best_first, make_project, make_prompt, make_ranking_task, make_user


@pytest.fixture
def dora(project_a):
    user = make_user("dora")
    Membership.objects.create(project=project_a, user=user, role=Role.LABELER)
    return user


def candidates(task: Task) -> list[int]:
    """The task's candidate ids in id order: the order the hand-computed rows below are written in."""
    return sorted(task.task_candidates.values_list("candidate_id", flat=True))


def rank(user, task: Task, ranks: list[int]) -> Ranking:
    """``user`` ranks the task's candidates (in id order) with ``ranks``, through the service."""
    entries = [{"candidate": c, "rank": r} for c, r in zip(candidates(task), ranks, strict=True)]
    ranking, _ = services.submit_ranking(labeler=user, task=task, entries=entries, seconds_spent=10)
    return ranking


def answer(task: Task, ranks: list[int]) -> dict[str, int]:
    return {str(c): r for c, r in zip(candidates(task), ranks, strict=True)}


def with_overlap(project: Project, overlap: int) -> Project:
    project.overlap = overlap
    project.save()
    return project


# --- The math the platform adds -----------------------------------------------------------------------------


def test_pairwise_accuracy_counts_ordered_pairs_and_half_a_tie():
    # The reference orders 5 of its 6 pairs (items 0 and 1 tie, so that pair is not counted); the ranking
    # agrees on 4 of them and ties items 2 and 3, which the reference orders: 4 + 1/2 = 4.5 of 5.
    assert pairwise_accuracy([1, 2, 3, 3], [1, 1, 2, 3]) == (4.5, 5)
    assert pairwise_accuracy([4, 3, 2, 1], [1, 2, 3, 4]) == (0.0, 6)
    assert pairwise_accuracy([1, 1], [1, 1]) == (0.0, 0)


def test_the_first_shown_responses_share_of_the_win_counts_ties_fractionally():
    assert first_shown_credit([1, 2, 3]) == 1.0
    assert first_shown_credit([2, 1, 3]) == 0.0
    assert first_shown_credit([1, 1, 2]) == 0.5
    assert first_shown_credit([1, 1, 1, 1]) == 0.25  # all tied: exactly chance


def test_the_chance_test_is_the_binomial_z_test():
    # 8 wins in 10 trials at chance 1/2: expected 5, variance 10 / 4, z = 3 / sqrt(2.5) = 1.8974,
    # two-sided p = erfc(1.8974 / sqrt 2) = 0.05778.
    expected, se, z, p = chance_test(8, [0.5] * 10)
    assert (expected, se) == (5.0, pytest.approx(math.sqrt(2.5)))
    assert z == pytest.approx(1.897367, abs=1e-6) and p == pytest.approx(0.057780, abs=1e-6)
    assert chance_test(0, []) == (0.0, 0.0, None, None)


# --- Agreement ------------------------------------------------------------------------------------------------


@pytest.fixture
def three_rankings(project_a, users, dora):
    """One k=4 task ranked by three labelers (rows in candidate-id order; the example of test_agreement)."""
    with_overlap(project_a, 3)
    task = make_ranking_task(project_a)
    rows = {"alice": [1, 2, 3, 4], "carol": [2, 1, 3, 4], "dora": [1, 3, 2, 4]}
    people = {"alice": users["alice"], "carol": users["carol"], "dora": dora}
    return task, {name: rank(people[name], task, ranks) for name, ranks in rows.items()}


def test_task_agreement_is_kendalls_w_of_its_rankings(three_rankings):
    task, _ = three_rankings
    # Rank sums [4, 6, 8, 12], S = 35, W = 12 * 35 / (9 * 60) = 7/9; Borda consensus by those sums.
    result = quality.task_agreement(task)
    assert result["rankings"] == 3 and result["kendall_w"] == pytest.approx(7 / 9)
    assert [result["consensus"][str(c)] for c in candidates(task)] == [1, 2, 3, 4]


def test_task_agreement_needs_two_rankings_and_leaves_rejected_ones_out(three_rankings):
    task, rankings = three_rankings
    Ranking.objects.filter(pk__in=[rankings["carol"].pk, rankings["dora"].pk]).update(
        review_status=ReviewStatus.REJECTED)
    result = quality.task_agreement(task)
    assert (result["rankings"], result["kendall_w"]) == (1, None)


def test_each_ranking_is_scored_against_the_consensus_of_the_others(three_rankings, project_a, users, dora):
    task, rankings = three_rankings
    # alice vs Borda(carol, dora): sums [3, 4, 5, 8] -> [1, 2, 3, 4]: all 6 pairs agree.
    # carol vs Borda(alice, dora): sums [2, 5, 5, 8] -> [1, 2, 2, 3]: 5 ordered pairs, carol reverses (1, 2): 4/5.
    # dora vs Borda(alice, carol): sums [3, 3, 6, 8] -> [1, 1, 2, 3]: 5 ordered pairs, dora reverses (2, 3): 4/5.
    expected = {"alice": (1.0, 6), "carol": (0.8, 5), "dora": (0.8, 5)}
    for name, (share, pairs) in expected.items():
        result = quality.ranking_agreement(rankings[name])
        assert (result["others"], result["pairwise"], result["pairs"]) == (2, pytest.approx(share), pairs)
    assert quality.labeler_agreement(project_a, users["carol"]) == {"tasks": 1, "pairwise": pytest.approx(0.8),
                                                                    "pairs": 5}
    rows = {row["username"]: row["agreement"] for row in quality.project_quality(project_a)["labelers"]}
    assert rows["dora"]["pairwise"] == pytest.approx(0.8) and rows["alice"]["pairwise"] == 1.0


@pytest.fixture
def two_rounds(users, dora):
    """A k=2 project: round 1 (tasks without a round count there) and round 2, two labelers on each task."""
    project = make_project("pairs", k=2, overlap=3, members={users["alice"]: Role.LABELER,
                                                                users["carol"]: Role.LABELER, dora: Role.LABELER})
    agree, disagree, later = (make_ranking_task(project) for _ in range(3))
    Round.objects.create(project=project, number=1)
    Task.objects.filter(pk=later.pk).update(round=Round.objects.create(project=project, number=2))
    rank(users["alice"], agree, [1, 2])
    rank(users["carol"], agree, [1, 2])
    rank(users["alice"], disagree, [1, 2])
    rank(users["carol"], disagree, [2, 1])
    rank(users["alice"], later, [1, 2])
    rank(users["carol"], later, [1, 2])
    rejected = rank(dora, later, [2, 1])
    Ranking.objects.filter(pk=rejected.pk).update(review_status=ReviewStatus.REJECTED)
    return project


def test_krippendorffs_alpha_per_round_and_for_the_project(two_rounds):
    # Units are (task, candidate) with each labeler's average rank. Round 1: units {1,1}, {2,2}, {1,2}, {2,1}:
    # o11 = o22 = 2, o12 = o21 = 2, n1 = n2 = 4, n = 8; with two values ordinal delta^2 is the same constant
    # for every disagreement, so alpha = 1 - 7 * 4 / (2 * 4 * 4) = 1/8.
    # Round 2: units {1,1}, {2,2} (dora's rejected ranking left out): alpha = 1.
    # Project: o11 = o22 = 4, o12 = o21 = 2, n1 = n2 = 6, n = 12: alpha = 1 - 11 * 4 / (2 * 36) = 7/18.
    agreement = quality.project_quality(two_rounds)["agreement"]
    assert agreement["alpha"] == pytest.approx(7 / 18) and agreement["units"] == 6
    by_round = {row["round"]: row for row in agreement["by_round"]}
    assert by_round[1]["alpha"] == pytest.approx(1 / 8) and by_round[2]["alpha"] == pytest.approx(1.0)
    assert (by_round[1]["units"], by_round[2]["units"], by_round[2]["rankings"]) == (4, 2, 2)
    # Kendall's W per task: 1 where both agree, 0 where they reverse each other (equal rank sums).
    assert [t["kendall_w"] for t in agreement["least_agreement"]] == [0.0, 1.0, 1.0]


def test_the_report_counts_rounds_statuses_and_distributions(two_rounds):
    report = quality.project_quality(two_rounds)
    counts = {row["round"]: row for row in report["counts"]}
    assert counts[1]["tasks"]["ranking"]["complete"] == 0 and counts[1]["tasks"]["ranking"]["open"] == 2
    assert counts[1]["tasks"]["demonstration"]["open"] == 3  # each prompt's demonstration task has no round
    assert counts[2]["rankings"] == {"submitted": 2, "accepted": 0, "rejected": 1}
    assert report["distributions"]["k"] == [{"k": 2, "tasks": 3}]
    assert sum(report["distributions"]["response_length"]["candidates"]) == 6


def test_the_project_report_runs_a_fixed_number_of_queries(project_a, users):
    def queries_for_tasks(n: int) -> int:
        for _ in range(n):
            task = make_ranking_task(project_a)
            services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=1)
        with CaptureQueriesContext(connection) as queries:
            quality.project_quality(project_a)
        return len(queries)

    assert queries_for_tasks(2) == queries_for_tasks(8) <= 14


# --- Gold tasks -----------------------------------------------------------------------------------------------


def test_an_admin_marks_a_ranking_task_gold_with_its_answer(project_a, users, client_for):
    task = make_ranking_task(project_a)
    response = client_for("adam").post(f"/api/tasks/{task.pk}/gold/", {"gold_ranks": answer(task, [1, 1, 2, 3])},
                                       format="json")
    assert response.status_code == 200, response.json()
    task.refresh_from_db()
    assert task.is_gold and task.gold_ranks == answer(task, [1, 1, 2, 3])
    # One slot per member of A (alice, carol, rita, adam) and the spares; the target follows, so it stays open.
    assert TaskSlot.objects.filter(task=task).count() == task.target_overlap == 4 + gold.GOLD_SPARE_SLOTS
    assert response.json()["slots"] == task.target_overlap and task.status == Task.Status.OPEN
    event = AuditEvent.objects.get(action="gold.mark")
    assert (event.actor, event.target_id, event.project) == (users["adam"], task.pk, project_a)


@pytest.mark.parametrize("ranks, message", [
    ([1, 2, 3], "missing"),  # one candidate left out
    ([1, 2, 4, 5], "consecutive"),
    ([1, 1, 1, 1], "at least two"),
])
def test_a_gold_answer_must_rank_every_candidate_consecutively(project_a, client_for, ranks, message):
    task = make_ranking_task(project_a)
    ids = candidates(task)[:len(ranks)]
    body = {"gold_ranks": {str(c): r for c, r in zip(ids, ranks, strict=True)}}
    response = client_for("adam").post(f"/api/tasks/{task.pk}/gold/", body, format="json")
    assert response.status_code == 400 and message in json.dumps(response.json()["fields"]["gold_ranks"])
    task.refresh_from_db()
    assert not task.is_gold and TaskSlot.objects.filter(task=task).count() == 1


def test_only_ranking_tasks_can_be_gold(project_a, users):
    demo = make_prompt(project_a).tasks.get(kind=TaskKind.DEMONSTRATION)
    with pytest.raises(Exception, match="only ranking tasks"):
        gold.mark_gold(admin=users["adam"], task=demo, gold_ranks={})


def test_unmarking_makes_it_an_ordinary_task_again(project_a, users, client_for):
    task = make_ranking_task(project_a)
    gold.mark_gold(admin=users["adam"], task=task, gold_ranks=answer(task, [1, 2, 3, 4]))
    rank(users["alice"], task, [1, 2, 3, 4])
    response = client_for("adam").delete(f"/api/tasks/{task.pk}/gold/")
    assert response.status_code == 200 and response.json()["is_gold"] is False
    task.refresh_from_db()
    # alice's ranking stays; the free slots beyond the overlap (1) are gone, so the task is complete.
    assert (task.gold_ranks, task.target_overlap, task.status) == (None, 1, Task.Status.COMPLETE)
    assert TaskSlot.objects.filter(task=task).count() == 1
    assert AuditEvent.objects.filter(action="gold.unmark", target_id=task.pk).exists()


def test_the_django_admin_marks_gold_through_the_service(project_a, users):
    task = make_ranking_task(project_a)
    data = {"project": project_a.pk, "kind": task.kind, "prompt": task.prompt_id, "target_overlap": 1,
            "done_count": 0, "status": task.status, "is_gold": "on",
            "gold_ranks": json.dumps(answer(task, [2, 1, 3, 4]))}
    form = TaskAdminForm(data=data, instance=task)
    assert form.is_valid(), form.errors
    request = RequestFactory().post("/")
    request.user = users["sam"]
    TaskAdmin(Task, None).save_model(request, form.save(commit=False), form, change=True)
    task.refresh_from_db()
    assert task.is_gold and task.gold_ranks == answer(task, [2, 1, 3, 4]) and task.target_overlap > 1
    bad = TaskAdminForm(data={**data, "gold_ranks": json.dumps(answer(task, [1, 2, 3, 5]))}, instance=task)
    assert not bad.is_valid() and "consecutive" in str(bad.errors["gold_ranks"])


@pytest.fixture
def gold_scored(project_a, users, dora):
    """Two gold tasks; alice ranks both, carol and dora the first."""
    first, second = make_ranking_task(project_a), make_ranking_task(project_a)
    gold.mark_gold(admin=users["adam"], task=first, gold_ranks=answer(first, [1, 1, 2, 3]))
    gold.mark_gold(admin=users["adam"], task=second, gold_ranks=answer(second, [1, 2, 3, 4]))
    return {"alice": [rank(users["alice"], first, [1, 2, 3, 4]), rank(users["alice"], second, [1, 2, 2, 3])],
            "carol": [rank(users["carol"], first, [1, 1, 2, 3])], "dora": [rank(dora, first, [4, 3, 2, 1])]}


def test_gold_accuracy_is_pairwise_agreement_and_exact_matches_with_the_answers(gold_scored, project_a, users, dora):
    # First answer [1, 1, 2, 3] orders 5 pairs. alice [1, 2, 3, 4] agrees on all 5 (not exact); carol matches it;
    # dora [4, 3, 2, 1] reverses all 5. Second answer [1, 2, 3, 4] orders 6 pairs: alice [1, 2, 2, 3] ties one
    # of them (1/2), so alice has 5 + 5.5 = 10.5 of 11 pairs and no exact match.
    assert quality.labeler_gold_accuracy(project_a, users["alice"]) == {
        "gold_rankings": 2, "pairwise": pytest.approx(10.5 / 11), "exact": 0.0}
    assert quality.labeler_gold_accuracy(project_a, users["carol"]) == {"gold_rankings": 1, "pairwise": 1.0,
                                                                        "exact": 1.0}
    assert quality.labeler_gold_accuracy(project_a, dora) == {"gold_rankings": 1, "pairwise": 0.0, "exact": 0.0}
    assert quality.labeler_gold_accuracy(project_a, users["rita"])["pairwise"] is None
    result = quality.ranking_gold_result(gold_scored["alice"][1])
    assert (result["pairwise"], result["pairs"], result["exact"]) == (pytest.approx(5.5 / 6), 6, False)


def test_review_signals_give_agreement_and_gold_beside_each_label(gold_scored):
    labels = [gold_scored["alice"][0], gold_scored["carol"][0]]
    with CaptureQueriesContext(connection) as queries:
        signals = quality.review_signals(kind=TaskKind.RANKING, labels=labels)
    assert len(queries) <= 6
    alice, carol = signals[labels[0].pk], signals[labels[1].pk]
    assert alice["task"]["rankings"] == 3 and carol["gold"]["exact"] is True
    assert alice["labeler_gold"]["gold_rankings"] == 2 and alice["agreement"]["others"] == 2


def test_gold_tasks_are_served_at_the_projects_rate(users, settings):
    settings.SECRET_KEY = "a fixed key, so the draws below are the queue's"
    alice = users["alice"]
    project = make_project("gold mix", k=2, gold_rate=0.3, members={alice: Role.LABELER, users["adam"]: Role.ADMIN})
    for _ in range(40):
        make_ranking_task(project)
    for _ in range(20):
        task = make_ranking_task(project)
        gold.mark_gold(admin=users["adam"], task=task, gold_ranks=answer(task, [1, 2]))
    served = []
    for _ in range(40):
        lease = services.next_task(user=alice, project=project, kind=TaskKind.RANKING)
        task = Task.objects.get(pk=lease.task_id)
        served.append(task.is_gold)
        services.submit_ranking(labeler=alice, task=task, entries=best_first(task), seconds_spent=1)
    # The queue serves gold exactly on the turns whose draw falls below the rate (the nth draw after n tasks).
    expected = [services.gold_draw(project_id=project.pk, user_id=alice.pk, served=n) < 0.3 for n in range(40)]
    assert served == expected
    assert 40 * 0.3 - 3 * math.sqrt(40 * 0.3 * 0.7) <= sum(served) <= 40 * 0.3 + 3 * math.sqrt(40 * 0.3 * 0.7)


def test_the_gold_draws_converge_to_the_rate(settings):
    settings.SECRET_KEY = "a fixed key"
    draws = [services.gold_draw(project_id=1, user_id=7, served=n) < 0.2 for n in range(20_000)]
    assert sum(draws) / len(draws) == pytest.approx(0.2, abs=0.01)  # 3.5 standard errors


def test_every_labeler_gets_each_gold_task_once(users, settings):
    settings.SECRET_KEY = "another fixed key"
    alice, carol = users["alice"], users["carol"]
    project = make_project("gold once", k=2, overlap=2, gold_rate=0.5,
                           members={alice: Role.LABELER, carol: Role.LABELER, users["adam"]: Role.ADMIN})
    golds = {make_ranking_task(project).pk for _ in range(2)}
    for task_id in golds:
        task = Task.objects.get(pk=task_id)
        gold.mark_gold(admin=users["adam"], task=task, gold_ranks=answer(task, [2, 1]))
    for _ in range(12):
        make_ranking_task(project)
    for labeler in (alice, carol):
        served = []
        while (lease := services.next_task(user=labeler, project=project, kind=TaskKind.RANKING)) is not None:
            task = Task.objects.get(pk=lease.task_id)
            served.append(task.pk)
            services.submit_ranking(labeler=labeler, task=task, entries=best_first(task), seconds_spent=1)
        assert len(served) == len(set(served)) and golds <= set(served), labeler


@pytest.mark.slow
def test_concurrent_labelers_get_each_gold_task_at_most_once(transactional_db, settings):
    """Eight labelers drain a queue with gold at once, each in its own thread and connection (on PostgreSQL:
    the SKIP LOCKED claim): no slot goes twice, no labeler sees a gold task twice, no ordinary task
    overfills, and the gold tasks are served."""
    settings.SECRET_KEY = "a fixed key for the crowd"
    admin = make_user("gold admin")
    labelers = [make_user(f"gold labeler {i}") for i in range(8)]
    project = make_project("gold crowd", k=2, overlap=2, gold_rate=0.5, demonstrations_enabled=False,
                           members={admin: Role.ADMIN, **{u: Role.LABELER for u in labelers}})
    golds = [make_ranking_task(project) for _ in range(3)]
    for task in golds:
        gold.mark_gold(admin=admin, task=task, gold_ranks=answer(task, [1, 2]))
    for _ in range(24):
        make_ranking_task(project)
    served, errors = [], []
    barrier = threading.Barrier(len(labelers))

    def work(user):
        try:
            barrier.wait()
            while (lease := services.next_task(user=user, project=project, kind=TaskKind.RANKING)) is not None:
                task = Task.objects.get(pk=lease.task_id)
                services.submit_ranking(labeler=user, task=task, entries=best_first(task), seconds_spent=1)
                served.append((user.pk, task.pk, task.is_gold))
        except Exception as exc:  # surfaced below: a thread's failure fails the test
            errors.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(u,)) for u in labelers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    assert len({(user, task) for user, task, _ in served}) == len(served) == Ranking.objects.count()
    ordinary = Counter(task for _, task, is_gold in served if not is_gold)
    assert len(ordinary) == 24 and set(ordinary.values()) == {2}  # every ordinary task exactly filled
    assert {task for _, task, is_gold in served if is_gold} == {t.pk for t in golds}


def test_gold_is_never_served_alone_nor_counted_as_waiting(users):
    alice = users["alice"]
    project = make_project("only gold", k=2, gold_rate=0.5, members={alice: Role.LABELER, users["adam"]: Role.ADMIN})
    task = make_ranking_task(project)
    gold.mark_gold(admin=users["adam"], task=task, gold_ranks=answer(task, [1, 2]))
    assert services.next_task(user=alice, project=project, kind=TaskKind.RANKING) is None
    assert stats.waiting_counts(user=alice, project=project)[TaskKind.RANKING] == 0


def test_a_gold_task_looks_like_any_other_task_to_labelers(project_a, users, client_for):
    ordinary, golden = make_ranking_task(project_a), make_ranking_task(project_a)
    gold.mark_gold(admin=users["adam"], task=golden, gold_ranks=answer(golden, [1, 2, 3, 4]))
    rank(users["carol"], golden, [1, 2, 3, 4])
    shown = {t.pk: TaskSerializer(Task.objects.for_display().select_related("project").get(pk=t.pk)).data
             for t in (ordinary, golden)}
    assert shown[golden.pk].keys() == shown[ordinary.pk].keys()
    assert (shown[golden.pk]["target_overlap"], shown[golden.pk]["done_count"]) == (1, 0)
    assert "gold" not in json.dumps(shown[golden.pk])


def test_snapshots_leave_gold_out_unless_asked(project_a, users, settings, tmp_path):
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    ordinary, golden = make_ranking_task(project_a), make_ranking_task(project_a)
    gold.mark_gold(admin=users["adam"], task=golden, gold_ranks=answer(golden, [1, 2, 3, 4]))
    kept = rank(users["alice"], ordinary, [1, 2, 3, 4])
    measured = rank(users["alice"], golden, [2, 1, 3, 4])
    assert create_snapshot(project=project_a).ranking_ids == [kept.pk]
    assert create_snapshot(project=project_a, include_gold=True).ranking_ids == [kept.pk, measured.pk]


# --- Position bias --------------------------------------------------------------------------------------------


def test_position_bias_compares_first_shown_wins_with_chance(users):
    alice, carol = users["alice"], users["carol"]
    project = make_project("bias", k=2, overlap=2, members={alice: Role.LABELER, carol: Role.LABELER})
    pairs = [make_ranking_task(project) for _ in range(2)]

    def shown_ranks(user, task, ranks):  # ranks in the order the page showed the candidates
        order = services.shown_order(task)
        entries = [{"candidate": c, "rank": r} for c, r in zip(order, ranks, strict=True)]
        services.submit_ranking(labeler=user, task=task, entries=entries, seconds_spent=1)

    shown_ranks(alice, pairs[0], [1, 2])  # first shown best: 1
    shown_ranks(carol, pairs[0], [1, 2])  # 1
    shown_ranks(alice, pairs[1], [2, 1])  # 0
    shown_ranks(carol, pairs[1], [1, 1])  # a tie at the top of 2: 1/2
    Project.objects.filter(pk=project.pk).update(k=4)
    project.refresh_from_db()
    quads = make_ranking_task(project)
    shown_ranks(alice, quads, [1, 2, 3, 4])  # 1
    shown_ranks(carol, quads, [2, 1, 3, 4])  # 0
    bias = quality.project_quality(project)["position_bias"]
    k2, k4 = bias["by_k"]
    # k = 2: 2.5 of 4 against 1/2: se = sqrt(1/4 / 4) = 0.25, z = (0.625 - 0.5) / 0.25 = 0.5, p = erfc(0.5 / sqrt 2).
    assert (k2["k"], k2["rankings"], k2["first_best"], k2["rate"], k2["chance"]) == (2, 4, 2.5, 0.625, 0.5)
    assert (k2["se"], k2["z"], k2["p_value"]) == (0.25, pytest.approx(0.5), pytest.approx(0.617075, abs=1e-6))
    # k = 4: 1 of 2 against 1/4: variance 2 * 3/16 = 0.375, z = 0.5 / sqrt(0.375) = 0.8165.
    assert (k4["rate"], k4["chance"], k4["z"]) == (0.5, 0.25, pytest.approx(0.816497, abs=1e-6))
    # All six: 3.5 against 2.5, variance 1 + 0.375, z = 1 / sqrt(1.375) = 0.8528.
    overall = bias["overall"]
    assert (overall["rankings"], overall["first_best"], overall["z"]) == (6, 3.5, pytest.approx(0.852803, abs=1e-6))


# --- Who may read and change what -----------------------------------------------------------------------------

READERS = {"alice": 403, "bob": 404, "olga": 404, "rita": 200, "adam": 200, "sam": 200, None: 401}
CHANGERS = {"alice": 403, "bob": 404, "olga": 404, "rita": 403, "adam": 200, "sam": 200, None: 401}


@pytest.mark.parametrize("who, status", list(READERS.items()))
def test_the_quality_report_is_for_reviewers_and_admins(project_a, project_b, client_for, who, status):
    assert client_for(who).get(f"/api/projects/{project_a.pk}/quality/").status_code == status


@pytest.mark.parametrize("who, status", list(READERS.items()))
def test_a_tasks_gold_answer_is_read_by_reviewers_and_admins(project_a, project_b, client_for, who, status):
    task = make_ranking_task(project_a)
    assert client_for(who).get(f"/api/tasks/{task.pk}/gold/").status_code == status


@pytest.mark.parametrize("who, status", list(CHANGERS.items()))
def test_only_admins_mark_gold(project_a, project_b, client_for, who, status):
    task = make_ranking_task(project_a)
    response = client_for(who).post(f"/api/tasks/{task.pk}/gold/", {"gold_ranks": answer(task, [1, 2, 3, 4])},
                                    format="json")
    assert response.status_code == status
    task.refresh_from_db()
    assert task.is_gold is (status == 200)


def test_the_quality_report_carries_the_hand_computed_numbers(two_rounds, users, client_for):
    Membership.objects.create(project=two_rounds, user=users["rita"], role=Role.REVIEWER)
    body = client_for("rita").get(f"/api/projects/{two_rounds.pk}/quality/").json()
    assert body["agreement"]["alpha"] == pytest.approx(7 / 18)
    assert {row["username"] for row in body["labelers"]} == {"alice", "carol", "dora"}


@pytest.mark.parametrize("who, status", [("alice", 403), ("olga", 404), ("rita", 200), ("adam", 200), ("sam", 200)])
def test_the_dashboard_is_for_reviewers_and_admins(project_a, users, who, status, three_rankings):
    client = Client()
    client.force_login(users[who])
    response = client.get(f"/manage/projects/{project_a.pk}/dashboard/")
    assert response.status_code == status
    if status == 200:
        assert b'id="dashboard-data"' in response.content and b"<canvas" in response.content
        assert "script-src 'self'" in response["Content-Security-Policy"]


def test_the_dashboard_needs_a_login(project_a):
    response = Client().get(f"/manage/projects/{project_a.pk}/dashboard/")
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")


def test_the_manage_page_links_to_the_dashboard(project_a, users):
    client = Client()
    client.force_login(users["adam"])
    assert f"/manage/projects/{project_a.pk}/dashboard/" in client.get(f"/manage/projects/{project_a.pk}/").text
