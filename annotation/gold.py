"""Gold tasks: ranking tasks with a known answer, mixed unannounced into the queue to measure labelers.

- **Marking.** A project admin marks a ranking task as gold with its answer (``mark_gold``: {candidate id:
  rank}, 1 = best, covering the task's candidates, consecutive from 1, ties allowed, not all tied) or
  unmarks it (``unmark_gold``); both are audited ("gold.mark", "gold.unmark"). The API
  (``POST``/``DELETE /api/tasks/{id}/gold/``) and the Django admin call these.
- **Slots.** Each labeler gets a gold task at most once (a labeler holds at most one slot of a task), and
  every labeler who may get it needs a slot of its own. So a gold task is not overlap-limited: marking
  gives it one slot per project member plus ``GOLD_SPARE_SLOTS`` for members who join later, and its
  ``target_overlap`` follows, so it stays open until those slots are done. ``provision_gold_slots`` (or
  marking again) tops a project's gold tasks up after members joined. Unmarking gives back the free slots
  beyond the project's overlap.
- **Serving.** ``services.next_task`` keeps gold tasks out of the ordinary order (they would come first:
  nearest to complete) and, when ``services.gold_turn`` draws below ``project.gold_rate``, leases a gold
  task the labeler never had in place of the ordinary one, through the same locked, conditional claim. Gold
  is served only where ordinary work exists, and the waiting counts leave it out (``stats``).
- **Looking the same.** The task payload and page are those of any task: the API shows a gold task with
  its project's overlap (``TaskSerializer``), never its many slots.
- **Measuring and training.** ``quality`` scores each labeler against the answers; training snapshots
  leave gold rankings out unless asked (``create_snapshot(include_gold=True)``).
"""
from __future__ import annotations

from collections.abc import Mapping

from django.db import transaction
from django.db.models import Max
from rest_framework.exceptions import ValidationError

from . import audit, services
from .errors import Conflict
from .models import Membership, Project, Task, TaskKind, TaskSlot

GOLD_SPARE_SLOTS = 10  # members who join after marking; provision_gold_slots tops up beyond that
MAX_SLOTS = 32767  # Task.target_overlap is a PositiveSmallIntegerField


def clean_gold_ranks(task: Task, gold_ranks: Mapping) -> dict[str, int]:
    """The answer as stored, ``{"<candidate id>": rank}``; raises ValidationError({"gold_ranks": …}) unless
    the ranks cover exactly the task's candidates, start at 1, are consecutive (ties share a rank) and
    order at least two candidates (an all-tie answer measures nothing)."""
    try:
        entries = [{"candidate": int(c), "rank": int(r)} for c, r in dict(gold_ranks).items()]
    except (TypeError, ValueError):
        raise ValidationError({"gold_ranks": ["give the answer as {candidate id: rank}, in whole numbers"]}) from None
    try:
        services.validate_ranking_entries(task, entries)
    except ValidationError as exc:
        raise ValidationError({"gold_ranks": exc.detail["entries"]}) from None
    if len({e["rank"] for e in entries}) < 2:
        raise ValidationError({"gold_ranks": ["a gold answer must order at least two candidates"]})
    return {str(e["candidate"]): e["rank"] for e in sorted(entries, key=lambda e: e["candidate"])}


def gold_slot_count(project: Project) -> int:
    """Slots a gold task of ``project`` should have: one per member (any member may ask for ranking tasks)
    plus the spares, and never fewer than the project's overlap."""
    members = Membership.objects.filter(project=project).count()
    return min(MAX_SLOTS, max(project.overlap, members + GOLD_SPARE_SLOTS))


def _lock(task: Task) -> Task:
    return Task.objects.select_for_update(of=("self",)).select_related("project").get(pk=task.pk)


def _top_up(task: Task, wanted: int) -> int:
    """Add free slots until the (locked) task has ``wanted``; its target follows. Returns the slot count."""
    have = TaskSlot.objects.filter(task=task).count()
    if wanted > have:
        start = (TaskSlot.objects.filter(task=task).aggregate(top=Max("index"))["top"] or 0) + 1
        TaskSlot.objects.bulk_create(TaskSlot(task=task, project_id=task.project_id, kind=task.kind, index=start + i)
                                     for i in range(wanted - have))
    total = max(wanted, have)
    status = Task.Status.OPEN if task.status == Task.Status.COMPLETE and task.done_count < total else task.status
    Task.objects.filter(pk=task.pk).update(target_overlap=total, status=status)
    TaskSlot.objects.filter(task=task).sync_queue_order()  # the new slots, and the gold flag, join the queue
    return total


@transaction.atomic
def mark_gold(*, admin, task: Task, gold_ranks: Mapping) -> Task:
    """Make a ranking task gold with its known answer (marking again replaces the answer and tops the
    slots up). A completed task opens again for the labelers who have not had it. Locks the task row, so
    concurrent marks, unmarks and top-ups of one task run one at a time."""
    task = _lock(task)
    if task.kind != TaskKind.RANKING:
        raise ValidationError({"task": ["only ranking tasks can be gold"]})
    if task.status == Task.Status.CANCELLED:
        raise Conflict("This task was cancelled.")
    answer = clean_gold_ranks(task, gold_ranks)
    Task.objects.filter(pk=task.pk).update(is_gold=True, gold_ranks=answer)
    slots = _top_up(task, gold_slot_count(task.project))
    audit.record(actor=admin, action="gold.mark", target=task, gold_ranks=answer, slots=slots)
    task.refresh_from_db()
    return task


@transaction.atomic
def unmark_gold(*, admin, task: Task) -> Task:
    """Make a gold task ordinary again: its answer is dropped and the free slots beyond the project's
    overlap are removed (labels already given stay, and count). A no-op for a task that is not gold.
    Locks the task row."""
    task = _lock(task)
    if not task.is_gold:
        return task
    used = TaskSlot.objects.filter(task=task).exclude(status=TaskSlot.Status.FREE).count()
    keep = max(task.project.overlap, used)
    free = list(TaskSlot.objects.filter(task=task, status=TaskSlot.Status.FREE).order_by("-index")
                .values_list("pk", flat=True))
    surplus = max(0, used + len(free) - keep)
    # A concurrent claim may lease one of these meanwhile: the status filter leaves it, and it is counted below.
    TaskSlot.objects.filter(pk__in=free[:surplus], status=TaskSlot.Status.FREE).delete()
    total = TaskSlot.objects.filter(task=task).count()
    status = task.status
    if status != Task.Status.CANCELLED:
        status = Task.Status.COMPLETE if task.done_count >= total else Task.Status.OPEN
    Task.objects.filter(pk=task.pk).update(is_gold=False, gold_ranks=None, target_overlap=total, status=status)
    TaskSlot.objects.filter(task=task).sync_queue_order()
    audit.record(actor=admin, action="gold.unmark", target=task, slots=total)
    task.refresh_from_db()
    return task


def provision_gold_slots(*, project: Project) -> int:
    """Top every open gold task of ``project`` up to ``gold_slot_count`` (after members joined); returns
    how many tasks got new slots. Each task is locked in its own short transaction."""
    wanted = gold_slot_count(project)
    grown = 0
    for task_id in Task.objects.filter(project=project, is_gold=True).exclude(
            status=Task.Status.CANCELLED).values_list("pk", flat=True):
        with transaction.atomic():
            task = _lock(Task(pk=task_id))
            if task.is_gold and task.target_overlap < wanted:
                _top_up(task, wanted)
                grown += 1
    return grown
