"""Read-only quality numbers, computed live from the database whenever they are asked for (no cache, no
writes): agreement between labelers, gold accuracy, position bias, and the project dashboard's counts.

Per-label helpers, for the review queue (each runs a few queries, whatever the project's size):

- ``task_agreement(task)``: Kendall's W of the task's rankings and their Borda consensus;
- ``ranking_agreement(ranking)``: one ranking against the leave-one-out consensus of the others on its task;
- ``ranking_gold_result(ranking)``: one ranking of a gold task against the known answer (None otherwise);
- ``labeler_gold_accuracy(project, user)`` and ``labeler_agreement(project, user)``: a labeler's totals;
- ``review_signals(kind=, labels=)``: all of the above for a page of labels at once, ``{label id: {...}}``,
  in a fixed number of queries (the review queue's hook).

The project report, ``project_quality(project)`` (``GET /api/projects/{id}/quality/`` and the dashboard),
reads the project's rankings once (a fixed number of queries) and computes everything from them.

Definitions (the math lives in ``annotation.agreement``):

- Rankings a reviewer rejected are left out of agreement (they are not part of the data), never out of
  gold accuracy or position bias (those measure the labeler, whatever became of the label).
- **Per-task agreement**: Kendall's W (tie-corrected) over the task's rankings, when 2 or more.
- **Krippendorff's alpha** (ordinal), for the project and per round: one unit per (task, candidate), whose
  values are the candidate's average rank from each labeler (ties: ``[1, 1, 2] -> [1.5, 1.5, 3]``). Tasks
  without a round count in round 1, which holds the imported tasks (``RoundManager``). Gold tasks count
  like any other: with an overlap of 1 they are the only tasks several labelers rank.
- **Leave-one-out agreement** of a ranking: ``pairwise_accuracy`` against the Borda consensus of the other
  rankings of its task: the share of the candidate pairs the others' consensus orders that the labeler
  orders the same way (a tie counts 1/2). A labeler's value is summed over pairs (micro-average).
- **Gold accuracy**: the same pairwise accuracy against the task's ``gold_ranks``, and the exact-match rate
  (every rank as in the answer).
- **Position bias**: per k, the share of rankings whose first-shown response was ranked best (a tie at the
  top of t responses counts 1/t), against chance 1/k, with the binomial standard error under chance and a
  two-sided z test (``chance_test``). Needs ``Ranking.shown_order`` (rankings recorded before it are left
  out).
"""
from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypedDict

from django.contrib.auth import get_user_model
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import Length

from .agreement import (
    average_ranks,
    chance_test,
    consensus_ranking,
    first_shown_credit,
    kendall_w,
    krippendorff_alpha,
    pairwise_accuracy,
)
from .models import (
    Candidate,
    Demonstration,
    Project,
    Ranking,
    RankingEntry,
    ReviewStatus,
    Round,
    Skip,
    Task,
    TaskCandidate,
    TaskKind,
)

LENGTH_BINS = (0, 100, 200, 400, 800, 1600, 3200)  # response length in characters; the last bin is open
LEAST_AGREEMENT_SHOWN = 20


class TaskAgreement(TypedDict):
    task: int
    rankings: int  # rankings counted (not rejected)
    kendall_w: float | None  # None below 2 rankings, or when every labeler tied everything
    consensus: dict[str, int]  # candidate id → Borda consensus rank, 1 = best
    confidence: dict[str, float]  # candidate id → share of comparisons that agree with the consensus


class LabelAgreement(TypedDict):
    ranking: int
    others: int  # the other (not rejected) rankings of the task
    pairwise: float | None  # None without others, or when their consensus ties everything
    pairs: int


class GoldResult(TypedDict):
    ranking: int
    pairwise: float | None
    pairs: int
    exact: bool


class GoldAccuracy(TypedDict):
    gold_rankings: int
    pairwise: float | None
    exact: float | None


class AgreementTotal(TypedDict):
    tasks: int  # tasks where the labeler and at least one other labeler ranked
    pairwise: float | None
    pairs: int


@dataclass
class _Ranking:
    id: int
    task_id: int
    labeler_id: int
    round: int
    review_status: str
    shown_order: list[int]
    seconds: float
    ranks: dict[int, int] = field(default_factory=dict)

    @property
    def rejected(self) -> bool:
        return self.review_status == ReviewStatus.REJECTED


# --- Loading ----------------------------------------------------------------------------------------------


def _load(rankings: QuerySet) -> list[_Ranking]:
    """The rankings with their current ranks, in two queries."""
    rows = {
        pk: _Ranking(pk, task, labeler, round_number or 1, status, list(shown or []), seconds)
        for pk, task, labeler, round_number, status, shown, seconds in rankings.order_by("id").values_list(
            "id", "task_id", "labeler_id", "task__round__number", "review_status", "shown_order", "seconds_spent")
    }
    entries = RankingEntry.objects.filter(ranking__in=rankings.values("id")).values_list("ranking_id", "candidate_id",
                                                                                           "rank")
    for ranking_id, candidate_id, rank in entries:
        if ranking_id in rows:
            rows[ranking_id].ranks[candidate_id] = rank
    return list(rows.values())


def _gold_answers(tasks: QuerySet) -> dict[int, dict[int, int]]:
    return {pk: {int(c): r for c, r in (answer or {}).items()}
            for pk, answer in tasks.filter(is_gold=True).values_list("id", "gold_ranks")}


def _by_task(rankings: Iterable[_Ranking]) -> dict[int, list[_Ranking]]:
    """Not-rejected rankings per task, each task's rankings over the same candidates."""
    grouped: dict[int, list[_Ranking]] = defaultdict(list)
    for r in rankings:
        if not r.rejected and r.ranks:
            grouped[r.task_id].append(r)
    for task_id, rows in grouped.items():
        grouped[task_id] = [r for r in rows if r.ranks.keys() == rows[0].ranks.keys()]
    return grouped


def _vector(r: _Ranking, candidates: list[int]) -> list[int]:
    return [r.ranks[c] for c in candidates]


def _share(credit: float, pairs: int) -> float | None:
    return credit / pairs if pairs else None


# --- Agreement --------------------------------------------------------------------------------------------


def _task_agreement(task_id: int, rows: list[_Ranking]) -> TaskAgreement:
    if not rows:
        return {"task": task_id, "rankings": 0, "kendall_w": None, "consensus": {}, "confidence": {}}
    candidates = sorted(rows[0].ranks)
    table = [_vector(r, candidates) for r in rows]
    try:
        w = kendall_w(table) if len(rows) >= 2 and len(candidates) >= 2 else None
    except ValueError:
        w = None  # every labeler tied every candidate
    consensus, confidence = consensus_ranking(table)
    return {"task": task_id, "rankings": len(rows), "kendall_w": w,
            "consensus": {str(c): rank for c, rank in zip(candidates, consensus, strict=True)},
            "confidence": {str(c): conf for c, conf in zip(candidates, confidence, strict=True)}}


def _leave_one_out(subject: _Ranking, others: list[_Ranking]) -> tuple[float, int]:
    """(credit, pairs) of ``subject`` against the Borda consensus of ``others``."""
    if not others:
        return 0.0, 0
    candidates = sorted(subject.ranks)
    consensus, _ = consensus_ranking([_vector(r, candidates) for r in others])
    return pairwise_accuracy(_vector(subject, candidates), consensus)


def _alpha(rows: Iterable[_Ranking]) -> tuple[float | None, int]:
    """Ordinal alpha over (task, candidate) units of average ranks; (alpha, pairable units)."""
    units: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
    for r in rows:
        candidates = sorted(r.ranks)
        for c, value in zip(candidates, average_ranks(_vector(r, candidates)), strict=True):
            units[r.task_id, c][r.labeler_id] = value
    pairable = [unit for unit in units.values() if len(unit) >= 2]
    try:
        return krippendorff_alpha(pairable, level="ordinal"), len(pairable)
    except ValueError:
        return None, len(pairable)  # nothing pairable, or no variation at all


def task_agreement(task: Task) -> TaskAgreement:
    """Kendall's W over the task's rankings (not rejected; None below 2) and their Borda consensus."""
    rows = _by_task(_load(Ranking.objects.filter(task=task)))
    return _task_agreement(task.pk, rows.get(task.pk, []))


def _label_agreement(subject: _Ranking, counted: list[_Ranking]) -> LabelAgreement:
    """``subject`` against the consensus of the ``counted`` rankings of its task other than itself."""
    others = [r for r in counted if r.id != subject.id and r.ranks.keys() == subject.ranks.keys()]
    credit, pairs = _leave_one_out(subject, others)
    return {"ranking": subject.id, "others": len(others), "pairwise": _share(credit, pairs), "pairs": pairs}


def ranking_agreement(ranking: Ranking) -> LabelAgreement:
    """This ranking against the Borda consensus of the other (not rejected) rankings of its task."""
    rows = _load(Ranking.objects.filter(task_id=ranking.task_id))
    subject = next(r for r in rows if r.id == ranking.pk)
    return _label_agreement(subject, _by_task(rows).get(ranking.task_id, []))


def _agreement_totals(rankings: list[_Ranking]) -> dict[int, AgreementTotal]:
    """labeler id → leave-one-out agreement over every task where someone else ranked too."""
    credit: Counter = Counter()
    pairs: Counter = Counter()
    tasks: Counter = Counter()
    for rows in _by_task(rankings).values():
        if len(rows) < 2:
            continue
        for subject in rows:
            c, p = _leave_one_out(subject, [r for r in rows if r.id != subject.id])
            credit[subject.labeler_id] += c
            pairs[subject.labeler_id] += p
            tasks[subject.labeler_id] += 1
    return {labeler: {"tasks": tasks[labeler], "pairwise": _share(credit[labeler], pairs[labeler]),
                      "pairs": pairs[labeler]} for labeler in tasks}


def labeler_agreement(project: Project, user) -> AgreementTotal:
    """The labeler's leave-one-out agreement over the project's tasks they ranked."""
    their_tasks = Ranking.objects.filter(labeler=user, task__project=project).values("task_id")
    totals = _agreement_totals(_load(Ranking.objects.filter(task_id__in=their_tasks)))
    return totals.get(user.pk, {"tasks": 0, "pairwise": None, "pairs": 0})


# --- Gold -------------------------------------------------------------------------------------------------


def _gold_result(r: _Ranking, answer: dict[int, int]) -> GoldResult | None:
    if not answer or r.ranks.keys() != answer.keys():
        return None
    candidates = sorted(answer)
    credit, pairs = pairwise_accuracy(_vector(r, candidates), [answer[c] for c in candidates])
    return {"ranking": r.id, "pairwise": _share(credit, pairs), "pairs": pairs, "exact": r.ranks == answer}


def ranking_gold_result(ranking: Ranking) -> GoldResult | None:
    """This ranking against its task's known answer; None unless the task is gold."""
    answers = _gold_answers(Task.objects.filter(pk=ranking.task_id))
    if ranking.task_id not in answers:
        return None
    (row,) = _load(Ranking.objects.filter(pk=ranking.pk))
    return _gold_result(row, answers[ranking.task_id])


def _gold_totals(rankings: list[_Ranking], answers: dict[int, dict[int, int]]) -> dict[int, GoldAccuracy]:
    credit: Counter = Counter()
    pairs: Counter = Counter()
    exact: Counter = Counter()
    count: Counter = Counter()
    for r in rankings:
        result = _gold_result(r, answers.get(r.task_id, {}))
        if result is None:
            continue
        credit[r.labeler_id] += (result["pairwise"] or 0) * result["pairs"]
        pairs[r.labeler_id] += result["pairs"]
        exact[r.labeler_id] += result["exact"]
        count[r.labeler_id] += 1
    return {labeler: {"gold_rankings": n, "pairwise": _share(credit[labeler], pairs[labeler]),
                      "exact": exact[labeler] / n} for labeler, n in count.items()}


def labeler_gold_accuracy(project: Project, user) -> GoldAccuracy:
    """The labeler's accuracy on the project's gold tasks: pairwise (summed over pairs) and exact-match
    rate, over every ranking they gave a gold task (rejected or not); Nones before their first gold task."""
    tasks = Task.objects.filter(project=project)
    rows = _load(Ranking.objects.filter(labeler=user, task__project=project, task__is_gold=True))
    return _gold_totals(rows, _gold_answers(tasks)).get(user.pk, {"gold_rankings": 0, "pairwise": None,
                                                                   "exact": None})


class ReviewSignals(TypedDict, total=False):
    task: TaskAgreement  # rankings only
    agreement: LabelAgreement  # rankings only
    gold: GoldResult | None  # rankings only: None unless the task is gold
    labeler_gold: GoldAccuracy


def review_signals(*, kind: str, labels: Iterable[Ranking | Demonstration]) -> dict[int, ReviewSignals]:
    """label id → what a reviewer sees beside it: for a ranking, its task's agreement, its leave-one-out
    agreement and its gold result; for any label, its labeler's gold accuracy in the label's project. Six
    queries at most, whatever the number of labels."""
    labels = list(labels)
    if not labels:
        return {}
    owner = "labeler_id" if kind == TaskKind.RANKING else "author_id"
    owners = {getattr(label, owner) for label in labels}
    projects = Task.objects.filter(pk__in={label.task_id for label in labels}).values("project_id")
    gold_rows = _load(Ranking.objects.filter(labeler_id__in=owners, task__project_id__in=projects,
                                             task__is_gold=True))
    totals = _gold_totals(gold_rows, _gold_answers(Task.objects.filter(pk__in={r.task_id for r in gold_rows})))
    # A labeler's totals span the project of the page (the review queue shows one project at a time).
    signals: dict[int, ReviewSignals] = {label.pk: {"labeler_gold": totals.get(getattr(label, owner), {
        "gold_rankings": 0, "pairwise": None, "exact": None})} for label in labels}
    if kind != TaskKind.RANKING:
        return signals
    task_ids = {label.task_id for label in labels}
    rows = _load(Ranking.objects.filter(task_id__in=task_ids))
    grouped, answers = _by_task(rows), _gold_answers(Task.objects.filter(pk__in=task_ids))
    by_id = {r.id: r for r in rows}
    tasks = {task_id: _task_agreement(task_id, grouped.get(task_id, [])) for task_id in task_ids}
    for label in labels:
        subject, counted = by_id[label.pk], grouped.get(label.task_id, [])
        signals[label.pk].update(
            task=tasks[label.task_id], agreement=_label_agreement(subject, counted),
            gold=_gold_result(subject, answers[label.task_id]) if label.task_id in answers else None)
    return signals


# --- Position bias ----------------------------------------------------------------------------------------


class BiasRow(TypedDict):
    k: int | None  # None for the row pooled over every k
    rankings: int
    first_best: float  # rankings whose first-shown response was ranked best (ties counted fractionally)
    rate: float | None
    chance: float | None  # the rate expected without a position effect: 1/k (pooled: the mean of 1/k)
    se: float | None  # standard error of the rate under chance
    z: float | None
    p_value: float | None


class PositionBias(TypedDict):
    by_k: list[BiasRow]
    overall: BiasRow


def _bias_row(k: int | None, credits: list[float], chances: list[float]) -> BiasRow:
    n = len(credits)
    observed = sum(credits)
    expected, se, z, p = chance_test(observed, chances)
    return {"k": k, "rankings": n, "first_best": observed, "rate": observed / n if n else None,
            "chance": expected / n if n else None, "se": se / n if n else None, "z": z, "p_value": p}


def position_bias(rankings: Iterable[_Ranking]) -> PositionBias:
    credits: dict[int, list[float]] = defaultdict(list)
    for r in rankings:
        if len(r.shown_order) < 2 or any(c not in r.ranks for c in r.shown_order):
            continue
        credits[len(r.shown_order)].append(first_shown_credit([r.ranks[c] for c in r.shown_order]))
    by_k = [_bias_row(k, credits[k], [1 / k] * len(credits[k])) for k in sorted(credits)]
    pooled = [c for k in sorted(credits) for c in credits[k]]
    chances = [1 / k for k in sorted(credits) for _ in credits[k]]
    return {"by_k": by_k, "overall": _bias_row(None, pooled, chances)}


# --- The project report -----------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _labelers(project: Project, rankings: list[_Ranking], answers: dict[int, dict[int, int]]) -> list[dict]:
    """One row per person who labeled or skipped in the project."""
    seconds: dict[int, list[float]] = defaultdict(list)
    ranked: Counter = Counter()
    for r in rankings:
        seconds[r.labeler_id].append(r.seconds)
        ranked[r.labeler_id] += 1
    demonstrated: Counter = Counter()
    for author, spent in Demonstration.objects.filter(task__project=project).values_list("author_id",
                                                                                          "seconds_spent"):
        seconds[author].append(spent)
        demonstrated[author] += 1
    skips = dict(Skip.objects.filter(task__project=project).values("labeler_id").annotate(n=Count("id"))
                 .values_list("labeler_id", "n"))
    agreement = _agreement_totals(rankings)
    gold = _gold_totals(rankings, answers)
    ids = set(seconds) | set(skips)
    names = dict(get_user_model().objects.filter(pk__in=ids).values_list("pk", "username"))
    rows = []
    for labeler in sorted(ids, key=lambda pk: names.get(pk, "")):
        labels = ranked[labeler] + demonstrated[labeler]
        hours = sum(seconds[labeler]) / 3600
        rows.append({
            "labeler": labeler, "username": names.get(labeler, ""), "rankings": ranked[labeler],
            "demonstrations": demonstrated[labeler], "labels": labels,
            "labels_per_hour": labels / hours if hours > 0 else None,
            "median_seconds": _median(seconds[labeler]), "skips": skips.get(labeler, 0),
            "skip_rate": skips.get(labeler, 0) / (labels + skips.get(labeler, 0)),
            "agreement": agreement.get(labeler, {"tasks": 0, "pairwise": None, "pairs": 0}),
            "gold": gold.get(labeler, {"gold_rankings": 0, "pairwise": None, "exact": None}),
        })
    return rows


def _agreement(project: Project, rankings: list[_Ranking]) -> dict:
    grouped = _by_task(rankings)
    tasks = [_task_agreement(task_id, rows) for task_id, rows in grouped.items() if len(rows) >= 2]
    ws = [t["kendall_w"] for t in tasks if t["kendall_w"] is not None]
    counted = [r for rows in grouped.values() for r in rows]
    alpha, units = _alpha(counted)
    statuses = dict(Round.objects.filter(project=project).values_list("number", "status"))
    by_round = []
    for number in sorted(set(statuses) | {r.round for r in counted}):
        in_round = [r for r in counted if r.round == number]
        round_alpha, round_units = _alpha(in_round)
        by_round.append({"round": number, "status": statuses.get(number), "alpha": round_alpha, "units": round_units,
                         "rankings": len(in_round)})
    least = sorted((t for t in tasks if t["kendall_w"] is not None), key=lambda t: (t["kendall_w"], t["task"]))
    return {"alpha": alpha, "units": units, "by_round": by_round, "tasks_with_overlap": len(tasks),
            "mean_kendall_w": statistics.fmean(ws) if ws else None, "median_kendall_w": _median(ws),
            "least_agreement": [{"task": t["task"], "rankings": t["rankings"], "kendall_w": t["kendall_w"]}
                                for t in least[:LEAST_AGREEMENT_SHOWN]]}


def _counts(project: Project, rankings: list[_Ranking]) -> list[dict]:
    """Per round: tasks by kind and status, gold tasks, rankings and demonstrations by review status."""
    rounds: dict[int, dict] = {}

    def row(number: int | None) -> dict:
        number = number or 1
        if number not in rounds:
            rounds[number] = {
                "round": number, "status": None, "gold_tasks": 0,
                "tasks": {kind: {status: 0 for status in Task.Status.values} for kind in
                          (TaskKind.RANKING, TaskKind.DEMONSTRATION)},
                "rankings": {status: 0 for status in ReviewStatus.values},
                "demonstrations": {status: 0 for status in ReviewStatus.values}}
        return rounds[number]

    for number, status in Round.objects.filter(project=project).values_list("number", "status"):
        row(number)["status"] = status
    tasks = Task.objects.filter(project=project).values("round__number", "kind", "status", "is_gold").annotate(
        n=Count("id")).values_list("round__number", "kind", "status", "is_gold", "n")
    for number, kind, status, gold, n in tasks:
        row(number)["tasks"][kind][status] += n
        row(number)["gold_tasks"] += n if gold else 0
    for r in rankings:
        row(r.round)["rankings"][r.review_status] += 1
    demos = Demonstration.objects.filter(task__project=project).values("task__round__number", "review_status")
    for number, status, n in demos.annotate(n=Count("id")).values_list("task__round__number", "review_status", "n"):
        row(number)["demonstrations"][status] += n
    return [rounds[number] for number in sorted(rounds)]


def _length_histogram(queryset: QuerySet, text_field: str) -> list[int]:
    """Counts of texts per LENGTH_BINS bin (characters), in one aggregate query."""
    bins = {}
    for i, lo in enumerate(LENGTH_BINS):
        within = Q(length__gte=lo) if i + 1 == len(LENGTH_BINS) else Q(length__gte=lo, length__lt=LENGTH_BINS[i + 1])
        bins[f"b{i}"] = Count("id", filter=within)
    counts = queryset.annotate(length=Length(text_field)).aggregate(**bins)
    return [counts[f"b{i}"] for i in range(len(LENGTH_BINS))]


def _distributions(project: Project) -> dict:
    per_task = TaskCandidate.objects.filter(task__project=project, task__kind=TaskKind.RANKING).values(
        "task_id").annotate(n=Count("id")).values_list("n", flat=True)
    ks = Counter(per_task)
    labels = [f"{lo}–{hi - 1}" for lo, hi in zip(LENGTH_BINS, LENGTH_BINS[1:], strict=False)] + [f"{LENGTH_BINS[-1]}+"]
    return {
        "k": [{"k": k, "tasks": ks[k]} for k in sorted(ks)],
        "response_length": {
            "bins": labels,
            "candidates": _length_histogram(Candidate.objects.filter(prompt__project=project), "text"),
            "demonstrations": _length_histogram(Demonstration.objects.filter(task__project=project), "text"),
        },
    }


def project_quality(project: Project) -> dict:
    """Everything the quality API and the dashboard show, from the current labels (about a dozen queries
    whatever the project's size; the work in Python grows with its rankings)."""
    rankings = _load(Ranking.objects.filter(task__project=project))
    answers = _gold_answers(Task.objects.filter(project=project))
    return {
        "project": project.pk,
        "agreement": _agreement(project, rankings),
        "labelers": _labelers(project, rankings, answers),
        "position_bias": position_bias(rankings),
        "gold": {"tasks": len(answers), "rate": project.gold_rate},
        "counts": _counts(project, rankings),
        "distributions": _distributions(project),
    }
