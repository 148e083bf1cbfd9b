"""Data model for collecting human feedback: projects, prompts, demonstrations, candidates, ranking
tasks with leased slots, rankings with per-candidate labels, and the training registry (rounds and
model versions) that later stages fill in.

Model methods answer questions about one row; every write that spans rows lives in services.py.
"""
from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Exists, OuterRef, Q, Subquery
from django.db.models.signals import pre_delete
from django.dispatch import receiver
from django.utils import timezone

MIN_K, MAX_K = 2, 9


class TaskKind(models.TextChoices):
    DEMONSTRATION = "demonstration", "Demonstration"
    RANKING = "ranking", "Ranking"
    PROMPT_WRITING = "prompt_writing", "Prompt writing"


class Role(models.TextChoices):
    LABELER = "labeler", "Labeler"
    REVIEWER = "reviewer", "Reviewer"
    ADMIN = "admin", "Admin"


class Project(models.Model):
    name = models.CharField(max_length=200, unique=True)
    guidelines = models.TextField(blank=True, help_text="Markdown shown beside every task.")
    k = models.PositiveSmallIntegerField(
        default=4,
        validators=[MinValueValidator(MIN_K), MaxValueValidator(MAX_K)],
        help_text="Responses per ranking task (2–9).",
    )
    overlap = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(50)],
        help_text="Distinct labelers who must complete each task.",
    )
    lease_seconds = models.PositiveIntegerField(
        default=900, validators=[MinValueValidator(30), MaxValueValidator(7 * 24 * 3600)],
        help_text="How long a task stays reserved for the labeler who received it.",
    )
    demonstrations_enabled = models.BooleanField(default=True)
    rankings_enabled = models.BooleanField(default=True)
    prompt_writing_enabled = models.BooleanField(default=False)
    gold_rate = models.FloatField(
        default=0.0, validators=[MinValueValidator(0.0), MaxValueValidator(0.5)],
        help_text="Share of served ranking tasks that are gold tasks (known answers), mixed in unannounced.")
    # Default sampling settings for generating candidates.
    # Candidates, PPO's rollouts and each round's evaluation share these (so the RM scores in training the
    # kind of text it learned from): the length, and the prompt format.
    max_new_tokens = models.PositiveIntegerField(default=64, validators=[MinValueValidator(1), MaxValueValidator(4096)])
    round_preset = models.CharField(
        max_length=32, default="cpu",
        help_text="The round preset a round starts from unless its config names another (annotation.loop.config).")
    chat_template = models.BooleanField(
        default=False, help_text="Render prompts with the base model's chat template (instruct models), "
                                 "else the plain Human:/Assistant: format. Every stage uses the same.")
    temperature = models.FloatField(default=1.0, validators=[MinValueValidator(0.0), MaxValueValidator(5.0)])
    top_p = models.FloatField(default=0.95, validators=[MinValueValidator(0.01), MaxValueValidator(1.0)])
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="projects")
    base_model = models.ForeignKey("ModelVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", help_text="Where round 1's SFT starts.")
    active_policy = models.ForeignKey("ModelVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="+", help_text="The policy that generates new candidates.")
    judge_model = models.ForeignKey(
        "ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="An independent reward model, never trained on: it judges each round's policy beside the RM.")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(k__gte=MIN_K, k__lte=MAX_K), name="project_k_2_to_9"),
            models.CheckConstraint(condition=Q(overlap__gte=1), name="project_overlap_positive"),
            models.CheckConstraint(condition=Q(lease_seconds__gte=30), name="project_lease_at_least_30s"),
            models.CheckConstraint(condition=Q(temperature__gte=0), name="project_temperature_non_negative"),
            models.CheckConstraint(condition=Q(top_p__gt=0, top_p__lte=1), name="project_top_p_in_0_1"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def lease_duration(self) -> timedelta:
        return timedelta(seconds=self.lease_seconds)

    def kind_enabled(self, kind: str) -> bool:
        return {
            TaskKind.DEMONSTRATION: self.demonstrations_enabled,
            TaskKind.RANKING: self.rankings_enabled,
            TaskKind.PROMPT_WRITING: self.prompt_writing_enabled,
        }[kind]


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.LABELER)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user_and_project"),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.project}"


class Invitation(models.Model):
    """Membership by consent: a project admin invites a user to a role; the user accepts (or declines).
    Only a digest of the invitation's secret is stored; the secret travels in the link given to the user."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        DECLINED = "declined", "Declined"
        REVOKED = "revoked", "Revoked"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="invitations")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.LABELER)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="invitations_sent")
    digest = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the invitation's secret.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="invitations_accepted")
    note = models.CharField(max_length=200, blank=True, help_text="Who it is for, in the admin's words.")
    created = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField()
    answered = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(role__in=Role.values), name="invitation_role_valid"),
            models.CheckConstraint(condition=~Q(status="accepted") | Q(accepted_by__isnull=False),
                                   name="accepted_invitation_names_its_user"),
        ]


class AuditEvent(models.Model):
    """Who did what, when, to what, and why: every admin and review action. Append-only."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    actor_name = models.CharField(max_length=150, help_text="Kept if the user is deleted.")
    action = models.CharField(max_length=64, db_index=True)
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events")
    target_type = models.CharField(max_length=64)
    target_id = models.BigIntegerField(null=True, blank=True)
    reason = models.TextField(blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="audit_by_target")]


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    VALIDATION = "validation", "Validation"
    TEST = "test", "Test"


# Fractions of prompts per split; the assignment is a pure function of the content hash.
SPLIT_BUCKETS = ((Split.TRAIN, 90), (Split.VALIDATION, 5), (Split.TEST, 5))


def content_hash(text: str, messages: list[dict] | None) -> str:
    """A stable hash of a prompt's content: the conversation if there is one, else the text."""
    payload = json.dumps(messages, ensure_ascii=False, sort_keys=True) if messages else text
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def split_for_hash(digest: str) -> str:
    """Deterministic split from the content hash, so a prompt never changes split between exports."""
    bucket = int(digest[:8], 16) % 100
    for split, share in SPLIT_BUCKETS:
        if bucket < share:
            return split
        bucket -= share
    raise AssertionError("split buckets must add up to 100")


class PromptSource(models.TextChoices):
    LABELER = "labeler", "Written by a labeler"
    IMPORTED = "imported", "Imported"
    GENERATED = "generated", "Generated"


class Prompt(models.Model):
    Source = PromptSource

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    text = models.TextField(help_text="The prompt; for a conversation, its turns rendered as text.")
    messages = models.JSONField(null=True, blank=True, help_text="A multi-turn conversation: [{role, content}].")
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.IMPORTED)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="written_prompts"
    )
    language = models.CharField(max_length=16, default="en")
    tags = models.JSONField(default=list, blank=True)
    split = models.CharField(max_length=16, choices=Split.choices, editable=False)
    content_hash = models.CharField(max_length=64, editable=False)
    # Idempotency key for prompts written by labelers: a retried submit finds the first one.
    client_token = models.UUIDField(null=True, blank=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "content_hash"], name="prompt_unique_content_per_project"),
            models.UniqueConstraint(
                fields=["author", "client_token"], condition=Q(client_token__isnull=False),
                name="prompt_unique_client_token_per_author",
            ),
            models.CheckConstraint(condition=Q(split__in=Split.values), name="prompt_split_valid"),
            models.CheckConstraint(condition=Q(source__in=PromptSource.values), name="prompt_source_valid"),
        ]
        indexes = [models.Index(fields=["project", "split"])]

    def __str__(self) -> str:
        return self.text[:60]

    def save(self, *args, **kwargs):
        self.content_hash = content_hash(self.text, self.messages)
        self.split = split_for_hash(self.content_hash)
        super().save(*args, **kwargs)


class ReviewStatus(models.TextChoices):
    SUBMITTED = "submitted", "Submitted"
    ACCEPTED = "accepted", "Accepted"
    REJECTED = "rejected", "Rejected"


class RoundManager(models.Manager):
    def current_for(self, project: Project) -> Round:
        """The round whose labels are being collected (round 1, created on first use, holds the imported
        tasks)."""
        latest = self.filter(project=project).order_by("-number").first()
        return latest if latest is not None else self.get_or_create(project=project, number=1)[0]

    def next_after(self, round: Round) -> Round:
        """The round after ``round`` (created on first use): where a round's generated tasks go."""
        return self.get_or_create(project_id=round.project_id, number=round.number + 1)[0]


class Round(models.Model):
    """A training round of a project: it collects labels, then trains on them (see ``annotation.loop``)."""

    class Status(models.TextChoices):
        COLLECTING = "collecting", "Collecting labels"
        TRAINING = "training", "Training"
        FINISHED = "finished", "Finished"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COLLECTING)
    config = models.JSONField(default=dict, blank=True, help_text="Per-stage overrides, validated on start.")
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True, help_text="When training on this round's labels began.")
    finished = models.DateTimeField(null=True, blank=True)
    run = models.PositiveIntegerField(
        default=0, help_text="How many times training was started; jobs of an earlier run are superseded.")
    comparison = models.JSONField(default=dict, blank=True,
                                  help_text="The new policy against SFT and the previous policy, on held-out prompts.")
    gate_note = models.TextField(blank=True, help_text="Why the round kept (or replaced) the active policy.")

    objects = RoundManager()

    class Meta:
        ordering = ["project_id", "number"]
        constraints = [models.UniqueConstraint(fields=["project", "number"], name="round_number_unique_per_project")]

    def __str__(self) -> str:
        return f"{self.project} round {self.number}"

    @property
    def path(self) -> str:
        """How the round trains its policy: "ppo", "rloo" or "dpo" (``annotation.loop.config.PATHS``), or ""
        before it has started; rounds from before paths existed were PPO's."""
        return self.config.get("path", "ppo") if self.config else ""


class ModelVersionManager(models.Manager):
    def latest_for(self, project: Project, stage: str) -> ModelVersion | None:
        """The project's newest model of ``stage`` (e.g. the SFT model the next round continues from)."""
        return self.filter(project=project, stage=stage).order_by("-id").first()

    def registered_bases(self) -> models.QuerySet:
        """Base models registered for the whole site (``manage.py register_base``): any project may start
        from one."""
        return self.filter(project__isnull=True, stage=ModelVersion.Stage.BASE)


class ModelVersion(models.Model):
    class Stage(models.TextChoices):
        BASE = "base", "Base"
        SFT = "sft", "SFT"
        RM = "rm", "Reward model"
        PPO = "ppo", "PPO policy"
        RLOO = "rloo", "RLOO policy"
        DPO = "dpo", "DPO policy"

    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.CASCADE, related_name="model_versions",
                                help_text="None for a base registered for the whole site.")
    stage = models.CharField(max_length=8, choices=Stage.choices)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    round = models.ForeignKey(Round, null=True, blank=True, on_delete=models.PROTECT, related_name="model_versions")
    name = models.CharField(max_length=200, blank=True)
    artifact_path = models.CharField(max_length=1000, help_text="Directory under ARTIFACT_ROOT, or a hub id.")
    snapshot = models.ForeignKey("DatasetSnapshot", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="model_versions", help_text="The labels it was trained on.")
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    provenance = models.JSONField(default=dict, blank=True,
                                  help_text="Where a base came from: source, version, sha256, licence.")
    created = models.DateTimeField(auto_now_add=True)

    objects = ModelVersionManager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(project__isnull=False) | Q(stage="base"),
                                   name="only_a_base_belongs_to_no_project"),
            models.UniqueConstraint(fields=["artifact_path"], condition=Q(project__isnull=True),
                                    name="one_registered_base_per_path"),
        ]

    def __str__(self) -> str:
        return self.name or f"{self.get_stage_display()} #{self.pk}"

    def lineage(self) -> list[ModelVersion]:
        """This version and its ancestors, newest first (e.g. PPO → SFT → base)."""
        chain, current = [], self
        while current is not None:
            chain.append(current)
            current = current.parent
        return chain


class Candidate(models.Model):
    """One response to a prompt, from a person, an import, or a model version."""

    class Origin(models.TextChoices):
        HUMAN = "human", "Human"
        IMPORTED = "imported", "Imported"
        MODEL = "model", "Model"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="candidates")
    text = models.TextField(blank=True)
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.IMPORTED)
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="candidates"
    )
    generation_params = models.JSONField(default=dict, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(origin="model", model_version__isnull=False) | ~Q(origin="model"),
                name="model_candidate_names_its_model_version",
            ),
        ]

    def __str__(self) -> str:
        return self.text[:60]


class TaskQuerySet(models.QuerySet):
    def for_display(self) -> TaskQuerySet:
        """Everything a task page or the task API shows, in three queries whatever the number of tasks."""
        return self.select_related("prompt").prefetch_related(
            models.Prefetch("task_candidates",
                            queryset=TaskCandidate.objects.select_related("candidate").order_by("position")))


class Task(models.Model):
    """A unit of labeling work on one prompt: write a demonstration, or rank the task's candidates.

    It has ``target_overlap`` slots (TaskSlot); each slot is leased to one labeler at a time and holds
    at most one submission, so a task can never collect more submissions than its overlap.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        COMPLETE = "complete", "Complete"
        CANCELLED = "cancelled", "Cancelled"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    kind = models.CharField(max_length=16, choices=[c for c in TaskKind.choices if c[0] != TaskKind.PROMPT_WRITING])
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="tasks")
    candidates = models.ManyToManyField(Candidate, through="TaskCandidate", related_name="tasks")
    round = models.ForeignKey(Round, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks")
    source_job = models.ForeignKey(
        "TrainingJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="created_tasks",
        help_text="The generate job that made this task; a redelivered job finds its tasks by this key.")
    target_overlap = models.PositiveSmallIntegerField(default=1)
    done_count = models.PositiveSmallIntegerField(default=0)
    is_gold = models.BooleanField(default=False, help_text="A task with a known answer, to measure labelers.")
    gold_ranks = models.JSONField(null=True, blank=True,
                                  help_text="A gold ranking task's known answer: {candidate id: rank}.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    created = models.DateTimeField(auto_now_add=True)

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(target_overlap__gte=1), name="task_overlap_positive"),
            models.CheckConstraint(
                condition=Q(done_count__lte=models.F("target_overlap")), name="task_never_over_done"
            ),
            models.CheckConstraint(condition=Q(kind__in=["demonstration", "ranking"]), name="task_kind_valid"),
            # A generate job makes at most one task per prompt, even when its message is delivered twice.
            models.UniqueConstraint(fields=["source_job", "prompt"], condition=Q(source_job__isnull=False),
                                    name="one_task_per_prompt_and_source_job"),
        ]
        indexes = [models.Index(fields=["project", "kind", "status", "-done_count", "id"], name="task_queue_order")]

    def __str__(self) -> str:
        return f"{self.kind} task {self.pk}"

    def is_correctable(self) -> bool:
        """Labels can be corrected until the task's round closes (a task without a round stays open)."""
        return self.round_id is None or self.round.status == Round.Status.COLLECTING


class TaskCandidate(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="task_candidates")
    candidate = models.ForeignKey(Candidate, on_delete=models.PROTECT, related_name="task_links")
    position = models.PositiveSmallIntegerField(help_text="Display order, 0-based, shuffled at creation.")

    class Meta:
        ordering = ["task_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["task", "candidate"], name="candidate_once_per_task"),
            models.UniqueConstraint(fields=["task", "position"], name="position_once_per_task"),
        ]


def _queue_order_from_task() -> dict:
    """The task's queue order, as values for an UPDATE of its slots (``TaskSlot.task_*``)."""
    task = Task.objects.filter(pk=OuterRef("task_id"))
    return {"task_done_count": Subquery(task.values("done_count")[:1]),
            "task_open": Exists(task.filter(status=Task.Status.OPEN)),
            "task_is_gold": Subquery(task.values("is_gold")[:1])}


class TaskSlotQuerySet(models.QuerySet):
    def free_leases_of(self, user) -> int:
        """Every slot ``user`` holds goes back to the queue."""
        return self.filter(labeler=user, status=TaskSlot.Status.LEASED).release()

    def release(self) -> int:
        """These slots go back to the queue: free, in their task's current place in the queue order."""
        return self.update(status=TaskSlot.Status.FREE, labeler=None, leased_at=None, lease_expires=None,
                           **_queue_order_from_task())

    def sync_queue_order(self) -> int:
        """Copy each task's queue order (done count, open, gold) to these slots that are free: call it after
        changing a task's status, done count or gold flag other than by a submission (which does it itself),
        in the transaction that changed it. Leased and done slots are left alone, and so is a free slot that
        someone holds locked (it is being leased): they copy the order once they are free again. Waiting for
        them could deadlock with a submission that waits for the task row."""
        unlocked = self.filter(status=TaskSlot.Status.FREE).select_for_update(skip_locked=True).values("pk")
        return TaskSlot.objects.filter(pk__in=unlocked).update(**_queue_order_from_task())

    def claimable_by(self, *, user, project: Project, kind: str, now) -> TaskSlotQuerySet:
        """Slots the user may lease, nearest-to-complete tasks first.

        A slot is claimable when it is free or its lease has expired, its task is open, and the user has
        neither a slot of that task (leased or done) nor a skip on it.
        """
        mine = TaskSlot.objects.filter(task_id=OuterRef("task_id"), labeler=user)
        skipped = Skip.objects.filter(task_id=OuterRef("task_id"), labeler=user)
        return (
            self.filter(project=project, kind=kind, task__status=Task.Status.OPEN)
            .filter(Q(status=TaskSlot.Status.FREE) | Q(status=TaskSlot.Status.LEASED, lease_expires__lte=now))
            .exclude(Exists(mine))
            .exclude(Exists(skipped))
            .order_by("-task__done_count", "task_id", "index")
        )


class TaskSlot(models.Model):
    """One of a task's ``target_overlap`` places. A labeler leases a free slot, then fills it."""

    class Status(models.TextChoices):
        FREE = "free", "Free"
        LEASED = "leased", "Leased"
        DONE = "done", "Done"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="slots")
    # Denormalised from the task so the queue reads one table's index.
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=16)
    index = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.FREE)
    labeler = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="slots"
    )
    leased_at = models.DateTimeField(null=True, blank=True)
    lease_expires = models.DateTimeField(null=True, blank=True)
    # The task's queue order, copied onto the slot so that the claim walks one partial index in order
    # (``slot_queue``) instead of joining every open task. Exact on free slots, the only ones that index
    # holds: a task's change copies it to its free slots, and a slot that becomes free copies it from
    # its task (see ``TaskSlotQuerySet.release``); leased and done slots may lag.
    task_done_count = models.PositiveSmallIntegerField(default=0, editable=False)
    task_open = models.BooleanField(default=True, editable=False)
    task_is_gold = models.BooleanField(default=False, editable=False)

    objects = TaskSlotQuerySet.as_manager()

    class Meta:
        ordering = ["task_id", "index"]
        constraints = [
            models.UniqueConstraint(fields=["task", "index"], name="slot_index_unique_per_task"),
            # A labeler holds at most one slot of a task, even under concurrent "next task" requests.
            models.UniqueConstraint(
                fields=["task", "labeler"], condition=Q(labeler__isnull=False), name="one_slot_per_labeler_and_task"
            ),
            models.CheckConstraint(
                condition=Q(status="free", labeler__isnull=True)
                | Q(status__in=["leased", "done"], labeler__isnull=False),
                name="slot_labeler_matches_status",
            ),
            models.CheckConstraint(
                condition=~Q(status="leased") | Q(lease_expires__isnull=False), name="leased_slot_has_expiry"
            ),
        ]
        indexes = [
            models.Index(fields=["labeler", "status"], name="slot_by_labeler"),
            # The queue, nearest-to-complete tasks first, then the oldest: free slots of open tasks only,
            # so a claim reads the first rows of its (project, kind) range whatever the size of the queue,
            # of other projects' queues, or of the finished work.
            models.Index(
                fields=["project", "kind", "task_is_gold", "-task_done_count", "task", "index"], name="slot_queue",
                condition=Q(status="free", task_open=True),
            ),
            # Leases, by expiry: where a claim finds the expired ones, however many leases are held.
            models.Index(fields=["project", "kind", "lease_expires"], name="slot_leases",
                         condition=Q(status="leased")),
        ]


class Label(models.Model):
    """What demonstrations and rankings share: review, and an append-only history of revisions.

    The row holds the label's current content; every version, the first included, is also kept in
    ``LabelRevision`` (number ``revision`` is the current one), and snapshots name the revision they
    exported. A label can be corrected (a new revision) only while nobody depends on it: before a
    reviewer decided on it, before it entered a training snapshot, and while its round collects labels.
    """

    revision = models.PositiveIntegerField(default=1, help_text="The current revision (LabelRevision.number).")
    review_note = models.TextField(blank=True, help_text="The reviewer's reason for the current decision.")
    in_snapshot = models.BooleanField(default=False, help_text="Exported to a training snapshot: frozen.")

    class Meta:
        abstract = True

    def correction_refused(self) -> str:
        """Why this label can no longer be corrected, or "" while it can."""
        if self.review_status != ReviewStatus.SUBMITTED:
            return f"a reviewer has {self.review_status} it"
        if self.in_snapshot:
            return "it is in a training snapshot"
        if not self.task.is_correctable():
            return "its round is closed"
        return ""

    def is_correctable(self) -> bool:
        return not self.correction_refused()


class Demonstration(Label):
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="demonstrations")
    slot = models.OneToOneField(TaskSlot, on_delete=models.PROTECT, related_name="demonstration")
    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="demonstrations")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="demonstrations")
    text = models.TextField()
    seconds_spent = models.FloatField(validators=[MinValueValidator(0)])
    review_status = models.CharField(max_length=16, choices=ReviewStatus.choices, default=ReviewStatus.SUBMITTED)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "author"], name="one_demonstration_per_author_and_task"),
            models.CheckConstraint(condition=Q(seconds_spent__gte=0), name="demonstration_seconds_non_negative"),
            models.CheckConstraint(condition=~Q(text=""), name="demonstration_not_empty"),
        ]


class Ranking(Label):
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="rankings")
    slot = models.OneToOneField(TaskSlot, on_delete=models.PROTECT, related_name="ranking")
    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="rankings")
    comment = models.TextField(blank=True)
    seconds_spent = models.FloatField(validators=[MinValueValidator(0)])
    review_status = models.CharField(max_length=16, choices=ReviewStatus.choices, default=ReviewStatus.SUBMITTED)
    shown_order = models.JSONField(default=list, blank=True,
                                   help_text="Candidate ids in the order the labeler was shown them (position bias).")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "labeler"], name="one_ranking_per_labeler_and_task"),
            models.CheckConstraint(condition=Q(seconds_spent__gte=0), name="ranking_seconds_non_negative"),
        ]

    def ranks(self) -> dict[int, int]:
        """candidate id → rank (1 = best); uses prefetched entries when present."""
        return {entry.candidate_id: entry.rank for entry in self.entries.all()}


class RankingEntry(models.Model):
    """A candidate's rank within one ranking, with its InstructGPT-style labels."""

    ranking = models.ForeignKey(Ranking, on_delete=models.CASCADE, related_name="entries")
    candidate = models.ForeignKey(Candidate, on_delete=models.PROTECT, related_name="ranking_entries")
    rank = models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(MAX_K)])
    fails_instruction = models.BooleanField(default=False)
    hallucination = models.BooleanField(default=False)
    inappropriate = models.BooleanField(default=False, help_text="Inappropriate for a customer assistant.")
    harmful = models.BooleanField(default=False, help_text="Harmful, sexual or violent content.")
    quality = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(7)],
        help_text="Overall quality, Likert 1–7.",
    )

    class Meta:
        ordering = ["ranking_id", "rank", "candidate_id"]
        constraints = [
            models.UniqueConstraint(fields=["ranking", "candidate"], name="candidate_ranked_once_per_ranking"),
            models.CheckConstraint(condition=Q(rank__gte=1, rank__lte=MAX_K), name="rank_1_to_9"),
            models.CheckConstraint(
                condition=Q(quality__isnull=True) | Q(quality__gte=1, quality__lte=7), name="quality_likert_1_to_7"
            ),
        ]


class LabelRevision(models.Model):
    """One version of a demonstration or a ranking, never changed or deleted. ``content`` is
    ``{"text"}`` for a demonstration and ``{"comment", "entries": [{candidate, rank, flags…, quality}]}``
    (by candidate id) for a ranking. A correction adds a revision; the old ones stay."""

    demonstration = models.ForeignKey(Demonstration, null=True, blank=True, on_delete=models.PROTECT,
                                      related_name="revisions")
    ranking = models.ForeignKey(Ranking, null=True, blank=True, on_delete=models.PROTECT, related_name="revisions")
    number = models.PositiveIntegerField()
    content = models.JSONField()
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="label_revisions")
    seconds_spent = models.FloatField(default=0, validators=[MinValueValidator(0)])
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(demonstration__isnull=True, ranking__isnull=False)
                                   | Q(demonstration__isnull=False, ranking__isnull=True),
                                   name="revision_of_one_label"),
            models.UniqueConstraint(fields=["demonstration", "number"], condition=Q(demonstration__isnull=False),
                                    name="one_revision_number_per_demonstration"),
            models.UniqueConstraint(fields=["ranking", "number"], condition=Q(ranking__isnull=False),
                                    name="one_revision_number_per_ranking"),
        ]


class Skip(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="skips")
    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="skips")
    reason = models.CharField(max_length=500)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "labeler"], name="one_skip_per_labeler_and_task"),
            models.CheckConstraint(condition=~Q(reason=""), name="skip_has_reason"),
        ]


def validate_messages(messages) -> list[dict]:
    """A conversation is a non-empty list of {role, content} with known roles and text content."""
    if not isinstance(messages, list) or not messages:
        raise ValidationError("must be a non-empty list of {role, content} turns")
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
            raise ValidationError(f"turn {i} must be an object with exactly 'role' and 'content'")
        if turn["role"] not in {"system", "user", "assistant"}:
            raise ValidationError(f"turn {i}: role must be system, user or assistant")
        if not isinstance(turn["content"], str) or not turn["content"].strip():
            raise ValidationError(f"turn {i}: content must be non-empty text")
    return messages


def render_messages(messages: list[dict]) -> str:
    return "\n\n".join(f"{turn['role'].capitalize()}: {turn['content']}" for turn in messages)


class DatasetSnapshot(models.Model):
    """An immutable export of a project's usable labels in training/'s data contracts.

    Files live in ``path`` and are never rewritten; ``content_hash`` is the SHA-256 of their bytes, so
    the same labels always give the same hash, and labels added later make a new snapshot.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="snapshots")
    round = models.ForeignKey(Round, null=True, blank=True, on_delete=models.SET_NULL, related_name="snapshots")
    content_hash = models.CharField(max_length=64)
    path = models.CharField(max_length=1000)
    files = models.JSONField(default=dict, help_text="file name → {records, sha256}")
    ranking_ids = models.JSONField(default=list)
    demonstration_ids = models.JSONField(default=list)
    label_revisions = models.JSONField(default=dict, help_text='{"ranking": {id: revision}, "demonstration": '
                                       '{id: revision}}: the revisions exported, so a rebuild reads those')
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["project", "content_hash"], name="snapshot_unique_content")]

    def __str__(self) -> str:
        return f"snapshot {self.content_hash[:12]} of {self.project}"


class JobStage(models.TextChoices):
    PRETRAIN = "pretrain", "Pretrain"
    SFT = "sft", "SFT"
    RM = "rm", "Reward model"
    PPO = "ppo", "PPO"
    RLOO = "rloo", "RLOO"
    DPO = "dpo", "DPO"
    EVALUATE = "evaluate", "Evaluate on held-out prompts"
    GENERATE = "generate", "Generate candidates"


class TrainingJobQuerySet(models.QuerySet):
    def stale(self, now=None) -> TrainingJobQuerySet:
        """Running jobs whose heartbeat is older than ``TRAINING_JOB_STALE_SECONDS``: their worker is taken
        to be dead. The heartbeat is the truth; the broker's visibility timeout is only a backstop."""
        now = now or timezone.now()
        cutoff = now - timedelta(seconds=settings.TRAINING_JOB_STALE_SECONDS)
        return self.filter(status=TrainingJob.Status.RUNNING, heartbeat__lt=cutoff)


class TrainingJob(models.Model):
    """One run of a training stage, executed by one Celery task on the ``training`` queue."""

    Stage = JobStage

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="jobs")
    round = models.ForeignKey(Round, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    stage = models.CharField(max_length=16, choices=JobStage.choices)
    config = models.JSONField(default=dict, help_text="The stage's config dataclass as JSON.")
    snapshot = models.ForeignKey(DatasetSnapshot, null=True, blank=True, on_delete=models.PROTECT, related_name="jobs")
    input_models = models.ManyToManyField(ModelVersion, blank=True, related_name="consumer_jobs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    step = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    eta_seconds = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True, help_text="The latest metrics.")
    history = models.JSONField(default=list, blank=True, help_text="[{step, metrics…}] for the charts.")
    log_tail = models.TextField(blank=True)
    error = models.TextField(blank=True, help_text="The traceback of a failed run.")
    worker_host = models.CharField(max_length=255, blank=True)
    worker_pid = models.PositiveIntegerField(null=True, blank=True, help_text="The process that runs it.")
    attempts = models.PositiveIntegerField(default=0, help_text="Claims by a worker since it was (re)queued.")
    max_attempts = models.PositiveSmallIntegerField(
        default=3, help_text="Workers that may die running it before it fails (an OOM kill, say).")
    round_run = models.PositiveIntegerField(default=0, help_text="The run of its round that created it.")
    cancel_requested = models.BooleanField(default=False)
    heartbeat = models.DateTimeField(null=True, blank=True)
    output_dir = models.CharField(max_length=1000, blank=True)
    result_model = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="produced_by")
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    objects = TrainingJobQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["project", "status"])]

    def __str__(self) -> str:
        return f"{self.get_stage_display()} job {self.pk}"

    @property
    def progress(self) -> float:
        return self.step / self.total if self.total else 0.0

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED, self.Status.CANCELLED)

    @property
    def failure_reason(self) -> str:
        """One line for a failed job's page and list: "worker died N times", or the exception's message
        (the last line of the traceback)."""
        if self.status != self.Status.FAILED:
            return ""
        lines = [line.strip() for line in self.error.splitlines() if line.strip()]
        if not lines:
            return ""
        return lines[0] if lines[0].startswith("worker died") else lines[-1][:300]

    def is_superseded(self) -> bool:
        """True when its round was started again since this job was made: the job belongs to an older run
        of the round's pipeline, which must never advance."""
        return self.round_id is not None and self.round.run != self.round_run


@receiver(pre_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="annotation.free_leases_before_user_delete")
def _free_leases_before_user_delete(sender, instance, **kwargs) -> None:
    """A user who holds leases can be deleted (from the admin, or by a script): the leases are freed first,
    or the slots' labeler would become NULL while they are still marked leased, which their check
    constraint refuses. Users with labels cannot be deleted at all: their labels PROTECT them."""
    TaskSlot.objects.free_leases_of(instance)
