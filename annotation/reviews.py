"""Review: reviewers accept, reject or edit labels; labelers see the decision and, once a label is frozen, ask
for a change. Every action writes its AuditEvent in the action's own transaction.

The rules, written once here (views, the API and scripts all call these functions):

- **Who.** Only a project's reviewers and admins, and site staff, review. Nobody decides on a label they wrote:
  not its labeler, and not the author of its current revision (a reviewer who edited a demonstration leaves
  the next decision on it to someone else; they may still edit it again).
- **Re-review.** A decision can be changed later by any reviewer (accept a rejected label, reject an accepted
  one); each change is audited with the status it replaced. The same decision with the same reason again (a
  double click) changes nothing and logs nothing, unless it answers an open change request.
- **Snapshots.** A label in a snapshot can still be reviewed and edited. A snapshot never changes: it names the
  revision it exported, and an edit is a new revision. A rejection leaves the label out of every later
  snapshot (``annotation.loop.snapshots`` skips rejected labels); accepting it again brings it back.
- **Stale decisions.** A caller may pass the ``revision`` it showed the reviewer; if the label changed since
  (a labeler's correction, another reviewer's edit), the action is refused (409) instead of deciding on
  content nobody looked at.
- **Labelers** never change a decision (``Label.correction_refused`` ends corrections once a reviewer decided).
  When a label is frozen they ask for a change (``request_change``); the request is an AuditEvent shown in the
  review queue until a reviewer acts on the label again.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from django.db import transaction
from django.db.models import F, OuterRef, Prefetch, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from rest_framework.exceptions import PermissionDenied, ValidationError

from . import access, audit
from .errors import Conflict
from .models import (
    MAX_K,
    AuditEvent,
    Demonstration,
    LabelRevision,
    Project,
    Ranking,
    ReviewStatus,
    Role,
    TaskCandidate,
    TaskKind,
)

try:
    # Agreement and gold results come from annotation.quality, written alongside this module. Until it exists
    # the queue shows no quality signals. (quality must never import reviews: that would be an import circle.)
    from . import quality
except ImportError:
    quality = None

Label = Ranking | Demonstration

LABEL_MODELS: dict[str, type[Ranking] | type[Demonstration]] = {
    TaskKind.RANKING: Ranking, TaskKind.DEMONSTRATION: Demonstration}
OWNER_FIELD = {TaskKind.RANKING: "labeler", TaskKind.DEMONSTRATION: "author"}
DECISIONS = {"accept": ReviewStatus.ACCEPTED, "reject": ReviewStatus.REJECTED}
DECISION_ACTIONS = ("review.accept", "review.reject", "review.edit")
CHANGE_REQUESTED = "review.change_requested"
ALL_STATUSES = "all"


def kind_of(label: Label) -> str:
    return TaskKind.RANKING if isinstance(label, Ranking) else TaskKind.DEMONSTRATION


def owner_id(label: Label) -> int:
    """The user who submitted the label."""
    return label.labeler_id if isinstance(label, Ranking) else label.author_id


def _target_type(kind: str) -> str:
    return LABEL_MODELS[kind]._meta.label_lower


def _revisions(label: Label):
    return LabelRevision.objects.filter(**{kind_of(label): label})


def _lock(label: Label) -> Label:
    """The label's row, locked until the transaction ends: a labeler's correction and a reviewer's action on
    the same label run one after the other. Needs an open transaction."""
    return (type(label).objects.select_for_update(of=("self",)).select_related("task__project", "task__round")
            .get(pk=label.pk))


def _require_reviewer(user, label: Label, *, editing: bool = False) -> None:
    """A reviewer or admin of the label's project (or staff) who did not write it. Deciding also needs someone
    other than the author of the current revision; editing again over one's own edit is allowed."""
    if not access.holds_role(user, label.task.project_id, min_role=Role.REVIEWER):
        raise PermissionDenied("Reviews belong to the project's reviewers and admins.")
    authors = {owner_id(label)}
    if not editing:
        authors.add(_revisions(label).filter(number=label.revision).values_list("author_id", flat=True).first())
    if user.pk in authors:
        raise PermissionDenied("Nobody reviews their own label: another reviewer decides on it.")


def _require_revision(label: Label, revision: int | None) -> None:
    if revision is not None and revision != label.revision:
        raise Conflict(f"This {kind_of(label)} changed since you loaded it (now revision {label.revision}); "
                       "reload it and decide again.")


def review_label(*, reviewer, label: Label, decision: str, reason: str = "", revision: int | None = None) -> Label:
    """Accept or reject a ranking or demonstration (a reason is required to reject); returns the label as it
    now is. A re-review replaces the earlier decision and its note. Locks the label's row."""
    if decision not in DECISIONS:
        raise ValidationError({"decision": [f"choose one of {', '.join(DECISIONS)}"]})
    reason = reason.strip()
    if decision == "reject" and not reason:
        raise ValidationError({"reason": ["say why you reject it: the labeler reads this"]})
    status = DECISIONS[decision]
    with transaction.atomic():
        label = _lock(label)
        _require_reviewer(reviewer, label)
        _require_revision(label, revision)
        previous = label.review_status
        if previous == status and label.review_note == reason and not open_change_requests(kind_of(label), [label]):
            return label  # the same decision again (a double click, a retry): nothing to change or log
        type(label).objects.filter(pk=label.pk).update(review_status=status, review_note=reason)
        audit.record(actor=reviewer, action=f"review.{decision}", target=label, project=label.task.project,
                     reason=reason, kind=kind_of(label), revision=label.revision, previous_status=previous)
    label.review_status, label.review_note = status, reason
    return label


def _keep_current_revision(demonstration: Demonstration) -> None:
    """A label written without its revision row (by a fixture or a script that bypassed the services) gets one
    from its current text, by its labeler, so a reviewer's edit never replaces the only copy of the original."""
    if not _revisions(demonstration).filter(number=demonstration.revision).exists():
        LabelRevision.objects.create(demonstration=demonstration, number=demonstration.revision,
                                     content={"text": demonstration.text}, author_id=demonstration.author_id,
                                     seconds_spent=demonstration.seconds_spent)


def edit_demonstration(*, reviewer, demonstration: Demonstration, text: str, reason: str,
                       revision: int | None = None) -> Demonstration:
    """A reviewer's edit: a new revision written by the reviewer (every earlier one stays), which becomes the
    demonstration's text, accepted with ``reason`` as its note. Locks the demonstration's row."""
    reason = reason.strip()
    errors = {}
    if not text.strip():
        errors["text"] = ["a demonstration cannot be empty"]
    if not reason:
        errors["reason"] = ["say why you edit it: the labeler reads this"]
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        demonstration = _lock(demonstration)
        _require_reviewer(reviewer, demonstration, editing=True)
        _require_revision(demonstration, revision)
        if text == demonstration.text:
            raise ValidationError({"text": ["this is the current text: accept it instead"]})
        _keep_current_revision(demonstration)
        number = demonstration.revision + 1
        LabelRevision.objects.create(demonstration=demonstration, number=number, content={"text": text},
                                     author=reviewer, seconds_spent=0)
        Demonstration.objects.filter(pk=demonstration.pk).update(
            text=text, revision=number, review_status=ReviewStatus.ACCEPTED, review_note=reason,
            updated=timezone.now())
        audit.record(actor=reviewer, action="review.edit", target=demonstration, project=demonstration.task.project,
                     reason=reason, kind=TaskKind.DEMONSTRATION, revision=number, previous_revision=number - 1,
                     previous_status=demonstration.review_status)
    demonstration.refresh_from_db()
    return demonstration


def _open_change_request(label: Label, *, author, message: str) -> AuditEvent | None:
    """The same request by the same labeler that no review action has answered yet (a retried submit)."""
    events = AuditEvent.objects.filter(target_type=_target_type(kind_of(label)), target_id=label.pk)
    last_decision = events.filter(action__in=DECISION_ACTIONS).order_by("-id").values_list("id", flat=True).first()
    return (events.filter(action=CHANGE_REQUESTED, actor=author, reason=message, id__gt=last_decision or 0)
            .order_by("-id").first())


def request_change(*, labeler, label: Label, message: str) -> tuple[AuditEvent, bool]:
    """A labeler asks a reviewer to change a label they can no longer correct themselves (reviewed, in a
    snapshot, or its round closed); returns (the request, created). Recorded as an AuditEvent that the review
    queue shows; retrying the same message returns the first request."""
    message = message.strip()
    if not message:
        raise ValidationError({"message": ["say what should change and why"]})
    kind = kind_of(label)
    if owner_id(label) != labeler.pk:
        raise Conflict(f"Only the labeler who submitted this {kind} asks for a change to it.")
    frozen = label.correction_refused()
    if not frozen:
        raise Conflict(f"You can still correct this {kind} yourself: open it from your history.")
    with transaction.atomic():
        existing = _open_change_request(label, author=labeler, message=message)
        if existing is not None:
            return existing, False
        event = audit.record(actor=labeler, action=CHANGE_REQUESTED, target=label, project=label.task.project,
                             reason=message, kind=kind, revision=label.revision, review_status=label.review_status,
                             frozen=frozen)
    return event, True


# --- The queue -------------------------------------------------------------------------------------------------


def _last_event_id(kind: str, actions: Sequence[str]):
    events = AuditEvent.objects.filter(target_type=_target_type(kind), target_id=OuterRef("pk"), action__in=actions)
    return Coalesce(Subquery(events.order_by("-id").values("id")[:1]), Value(0))


def review_queue(*, project: Project, kind: str, status: str = ReviewStatus.SUBMITTED, change_requested: bool = False,
                 reviewer=None) -> QuerySet:
    """The project's labels of ``kind`` for review, oldest first (in submission order): those with ``status``
    ("all" for any), or with ``change_requested`` only those with a change request no review action has
    answered yet. The reviewer's own labels are left out: someone else reviews them."""
    rows = LABEL_MODELS[kind].objects.filter(task__project=project)
    if status != ALL_STATUSES:
        rows = rows.filter(review_status=status)
    if change_requested:
        rows = rows.annotate(last_request=_last_event_id(kind, [CHANGE_REQUESTED]),
                             last_decision=_last_event_id(kind, DECISION_ACTIONS)
                             ).filter(last_request__gt=F("last_decision"))
    if reviewer is not None:
        rows = rows.exclude(**{OWNER_FIELD[kind]: reviewer})
    return rows.order_by("id")


def for_review(queryset: QuerySet, kind: str) -> QuerySet:
    """What a reviewer sees of each label, loaded in a fixed number of queries however many labels there are."""
    revisions = Prefetch("revisions", queryset=LabelRevision.objects.select_related("author").order_by("number"))
    queryset = queryset.select_related("task__prompt", OWNER_FIELD[kind]).prefetch_related(revisions)
    if kind == TaskKind.RANKING:
        shown = TaskCandidate.objects.select_related("candidate").order_by("position")
        queryset = queryset.prefetch_related("entries", Prefetch("task__task_candidates", queryset=shown))
    return queryset


def waiting_counts(*, project: Project, reviewer) -> dict[str, int]:
    """Labels of each kind waiting for a first decision, the reviewer's own left out."""
    return {kind: review_queue(project=project, kind=kind, reviewer=reviewer).count() for kind in LABEL_MODELS}


def neighbour(queue: QuerySet, *, after: int | None = None, before: int | None = None) -> Label | None:
    """The first label of the queue after id ``after``, the last one before id ``before``, else the first."""
    if before is not None:
        return queue.filter(pk__lt=before).order_by("-id").first()
    return queue.filter(pk__gt=after or 0).first()


def change_requests(kind: str, labels: Sequence[Label]) -> dict[int, list[AuditEvent]]:
    """label id → its change requests, oldest first, each with ``open``: no review action answered it yet."""
    events = AuditEvent.objects.filter(target_type=_target_type(kind), target_id__in=[label.pk for label in labels],
                                       action__in=(CHANGE_REQUESTED, *DECISION_ACTIONS)).order_by("id")
    found: dict[int, list[AuditEvent]] = defaultdict(list)
    answered: dict[int, int] = {}
    for event in events:
        if event.action == CHANGE_REQUESTED:
            found[event.target_id].append(event)
        else:
            answered[event.target_id] = event.pk
    for label_id, requests in found.items():
        for event in requests:
            event.open = event.pk > answered.get(label_id, 0)
    return found


def quality_signals(kind: str, labels: Sequence[Label]) -> dict[int, dict]:
    """label id → agreement and gold results beside the label.

    The hook: ``annotation.quality.review_signals(kind=..., labels=...) -> {label id: {...}}`` when that module
    provides it (any JSON-serialisable dict per label); empty until then."""
    provider = getattr(quality, "review_signals", None)
    return provider(kind=kind, labels=labels) if provider is not None else {}


def attach_review_context(kind: str, labels: Sequence[Label]) -> list[Label]:
    """Give each label (from ``for_review``) what the review page and the API show beside it: ``kind``,
    ``owner``, ``history`` (its revisions), ``requests`` (change requests), ``signals`` (agreement and gold, or
    None) and, for a ranking, ``cards``: its candidates best first, each with ``entry`` (rank, flags, quality)
    and ``number`` (its position on the labeler's screen, from 1)."""
    labels = list(labels)
    requests = change_requests(kind, labels)
    signals = quality_signals(kind, labels)
    for label in labels:
        label.kind, label.owner = kind, getattr(label, OWNER_FIELD[kind])
        label.history = list(label.revisions.all())
        label.requests = requests.get(label.pk, [])
        label.signals = signals.get(label.pk)
        label.cards = []
        if kind == TaskKind.RANKING:
            _attach_cards(label)
    return labels


def _attach_cards(ranking: Ranking) -> None:
    """A ranking's candidates best first, and each revision's ranks as (rank, number on screen) pairs."""
    entries = {entry.candidate_id: entry for entry in ranking.entries.all()}
    cards = []
    for link in ranking.task.task_candidates.all():
        card = link.candidate
        card.entry, card.number = entries.get(card.pk), link.position + 1
        cards.append(card)
    ranking.cards = sorted(cards, key=lambda c: (c.entry.rank if c.entry else MAX_K + 1, c.number))
    numbers = {card.pk: card.number for card in cards}
    for revision in ranking.history:
        ranks = revision.content.get("entries", [])
        revision.ranked = sorted((e["rank"], numbers.get(e["candidate"], 0)) for e in ranks)


def open_change_requests(kind: str, labels: Sequence[Label]) -> set[int]:
    """Ids of the labels with a change request that no review action has answered yet."""
    return {label_id for label_id, events in change_requests(kind, labels).items() if any(e.open for e in events)}

