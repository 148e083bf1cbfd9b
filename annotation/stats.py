"""Read-only counts and per-labeler statistics for the labeler UI and the API (no writes here)."""
from __future__ import annotations

import statistics
from collections.abc import Iterable

from django.utils import timezone

from .models import Demonstration, Project, Prompt, Ranking, Skip, TaskKind, TaskSlot

WAITING_CAP = 1000
"""The home page counts waiting tasks up to this many per kind, then says "1000+": counting them all would
read every open slot of the project on every visit, so the count is a bounded read of the queue."""


def waiting_counts(*, user, project: Project) -> dict[str, int | bool]:
    """Tasks of each kind the user could get now: open slots they may claim, plus their own leases. Gold
    tasks are not counted: they are only served in place of an ordinary task (``services.next_task``), and
    a count that included them would give them away.

    The count reads at most ``WAITING_CAP × overlap + 1`` slots, unordered, so its cost does not grow with the
    queue; ``{kind}_more`` is true when there may be more than the count says."""
    now = timezone.now()
    counts: dict[str, int | bool] = {}
    limit = WAITING_CAP * max(project.overlap, 1)
    for kind in (TaskKind.DEMONSTRATION, TaskKind.RANKING):
        if not project.kind_enabled(kind):
            continue
        claimable = TaskSlot.objects.claimable_by(user=user, project=project, kind=kind, now=now)
        slots = list(claimable.filter(task__is_gold=False).order_by().values_list("task_id", flat=True)[:limit + 1])
        held = TaskSlot.objects.filter(labeler=user, project=project, kind=kind, status=TaskSlot.Status.LEASED).count()
        tasks = min(len(set(slots)), WAITING_CAP)
        counts[kind] = tasks + held
        counts[f"{kind}_more"] = len(slots) > limit or len(set(slots)) > WAITING_CAP
    return counts


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return round(statistics.median(values), 1) if values else None


def labeler_stats(*, user, since=None) -> dict:
    """Counts and median seconds per task kind, all time and since ``since`` (default: today, UTC)."""
    since = since or timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    rankings = list(Ranking.objects.filter(labeler=user).values_list("seconds_spent", "created"))
    demos = list(Demonstration.objects.filter(author=user).values_list("seconds_spent", "created"))

    def summary(rows):
        today = [s for s, created in rows if created >= since]
        return {"count": len(rows), "median_seconds": _median(s for s, _ in rows),
                "today": len(today), "today_median_seconds": _median(today)}

    return {
        "ranking": summary(rankings),
        "demonstration": summary(demos),
        "prompt_writing": {"count": Prompt.objects.filter(author=user, source=Prompt.Source.LABELER).count()},
        "skips": Skip.objects.filter(labeler=user).count(),
        "since": since.isoformat(),
    }
