"""Serializers validate the shape of requests and render responses; rules live in services.py."""
from __future__ import annotations

import copy

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from .. import exporting, queue, reviews, services
from ..formats import FORMATS
from ..imports.readers import FORMATS as IMPORT_FORMATS
from ..imports.readers import SOURCE_NAME
from ..loop.config import PRESETS
from ..models import (
    MAX_K,
    Candidate,
    DatasetSnapshot,
    Demonstration,
    Invitation,
    JobStage,
    LabelRevision,
    Membership,
    ModelVersion,
    Project,
    Prompt,
    Ranking,
    RankingEntry,
    ReviewStatus,
    Role,
    Round,
    Skip,
    Task,
    TaskKind,
    TrainingJob,
    validate_messages,
)

MAX_ID = 2**63 - 1  # the largest database id: a larger number is a 400, never an overflow in the query (500)


class RequestBodySerializer(serializers.Serializer):
    """A serializer that only validates request bodies, with fields built once per class.

    DRF deep-copies a serializer's declared fields for every instance, so that an instance may change its
    fields; a deep copy re-runs each field's ``__init__`` (and a nested ``many=True`` serializer's, and its
    fields'). For the labeling calls that was about a tenth of the server's CPU (py-spy, issue 13). These
    serializers never change their fields: each class deep-copies them once, builds their validators, and
    every instance gets shallow copies, which ``bind`` then makes its own (name, parent, label, source).
    A nested serializer among them (a ``many=True`` field's child) is shared, with its fields: validating
    keeps nothing on it. For request bodies only; a serializer with ``partial``, an instance or a context
    for its fields to read is a plain ``Serializer``.
    """

    def __init__(self, *args, **kwargs):
        if kwargs.get("partial") or kwargs.get("context") or args or "instance" in kwargs:
            raise TypeError(f"{type(self).__name__} validates request bodies: data=… only")
        super().__init__(*args, **kwargs)

    def get_fields(self):
        cls = type(self)
        built = cls.__dict__.get("_built_fields")
        if built is None:
            built = super().get_fields()
            for field in built.values():
                field.validators  # noqa: B018 -- built now, and shared by the copies
            cls._built_fields = built  # two threads building at once: either result will do
        return {name: copy.copy(field) for name, field in built.items()}


class ProjectSerializer(serializers.ModelSerializer):
    my_role = serializers.SerializerMethodField()
    base_model = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.filter(stage=ModelVersion.Stage.BASE), allow_null=True, required=False,
        help_text="A registered base model (GET /api/base-models/) that round 1's SFT starts from.")
    judge_model = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.filter(stage=ModelVersion.Stage.RM), allow_null=True, required=False,
        help_text="An independent reward model of this project that scores each round's policy beside the RM.")

    class Meta:
        model = Project
        fields = [
            "id", "name", "guidelines", "k", "overlap", "lease_seconds", "demonstrations_enabled",
            "rankings_enabled", "prompt_writing_enabled", "max_new_tokens", "chat_template", "temperature", "top_p",
            "round_preset", "base_model",
            "judge_model", "active_policy", "created", "my_role",
        ]
        read_only_fields = ["created", "active_policy"]

    def get_my_role(self, project) -> str | None:
        return getattr(project, "user_role", None)

    def validate_base_model(self, base):
        services.check_base_for(self.instance, base)
        return base

    def validate_round_preset(self, name: str) -> str:
        if name not in PRESETS:
            raise serializers.ValidationError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
        return name

    def validate_judge_model(self, judge):
        own = self.instance.pk if self.instance is not None else None
        if judge is not None and (judge.stage != ModelVersion.Stage.RM or judge.project_id != own):
            raise serializers.ValidationError("choose a reward model of this project that no round trained on")
        return judge


class ProjectCreateSerializer(ProjectSerializer):
    """A new project, optionally with a prompt file (multipart), all or nothing."""

    prompts = serializers.FileField(required=False, write_only=True,
                                    help_text="Prompt file: JSONL (items or hh-rlhf), .gz accepted.")
    prompts_format = serializers.ChoiceField(choices=FORMATS, default="items", write_only=True)

    class Meta(ProjectSerializer.Meta):
        fields = ProjectSerializer.Meta.fields + ["prompts", "prompts_format"]
        # A multipart form omits an unticked checkbox, which DRF reads as False: a switch the form leaves
        # out keeps the model's default instead.
        extra_kwargs = {name: {"default": Project._meta.get_field(name).default}
                        for name in ("demonstrations_enabled", "rankings_enabled", "prompt_writing_enabled",
                                     "chat_template")}


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "username", "role", "created"]
        read_only_fields = ["created"]


class MemberRoleSerializer(serializers.Serializer):
    """Change a member's role (project admins), or add a user (site staff only)."""

    user = serializers.IntegerField(max_value=MAX_ID, min_value=1)
    role = serializers.ChoiceField(choices=Role.choices)


class InvitationSerializer(serializers.ModelSerializer):
    accepted_by = serializers.CharField(source="accepted_by.username", read_only=True, default=None, allow_null=True)
    invited_by = serializers.CharField(source="invited_by.username", read_only=True)
    days = serializers.IntegerField(min_value=1, max_value=90, default=7, write_only=True,
                                    help_text="days until it expires")

    class Meta:
        model = Invitation
        fields = ["id", "role", "note", "status", "invited_by", "accepted_by", "created", "expires", "answered", "days"]
        read_only_fields = ["status", "created", "expires", "answered"]


class NewInvitationSerializer(InvitationSerializer):
    secret = serializers.CharField(read_only=True, help_text="shown once: give the link to the person")
    url = serializers.CharField(read_only=True, help_text="the page where they accept or decline")

    class Meta(InvitationSerializer.Meta):
        fields = InvitationSerializer.Meta.fields + ["secret", "url"]


class InvitationAnswerSerializer(serializers.Serializer):
    secret = serializers.CharField(max_length=200)


class MessageField(serializers.JSONField):
    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        try:
            return validate_messages(data)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None


class CandidateInSerializer(serializers.Serializer):
    """A candidate response: {"text", "origin"}, or just its text."""

    text = serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=100_000)
    origin = serializers.ChoiceField(choices=[Candidate.Origin.IMPORTED, Candidate.Origin.HUMAN],
                                     default=Candidate.Origin.IMPORTED)

    def to_internal_value(self, data):
        return super().to_internal_value({"text": data} if isinstance(data, str) else data)


class PromptInSerializer(serializers.Serializer):
    """One prompt to create: text or a conversation, and optionally k candidates for a ranking task."""

    text = serializers.CharField(required=False, allow_blank=True, max_length=100_000)
    messages = MessageField(required=False)
    language = serializers.CharField(required=False, max_length=16, default="en")
    tags = serializers.ListField(child=serializers.CharField(max_length=64), required=False, max_length=50)
    candidates = CandidateInSerializer(many=True, required=False, max_length=MAX_K)

    def validate(self, attrs):
        if not (attrs.get("text") or "").strip() and not attrs.get("messages"):
            raise serializers.ValidationError({"text": ["give the prompt as text or as messages"]})
        return attrs


class PromptCreateSerializer(PromptInSerializer):
    project = serializers.IntegerField(max_value=MAX_ID)


class BulkPromptSerializer(serializers.Serializer):
    project = serializers.IntegerField(max_value=MAX_ID)
    items = PromptInSerializer(many=True, min_length=1, max_length=5000)


class WritePromptSerializer(PromptInSerializer):
    client_token = serializers.UUIDField(help_text="From next-task; a retried submit with it creates nothing new.")
    candidates = None


class ImportSerializer(serializers.Serializer):
    """A file of prompts and labels to import into a project (multipart), all or nothing."""

    file = serializers.FileField(help_text="JSONL, a JSON array (FineGrainedRLHF) or CSV; gzip accepted.")
    format = serializers.ChoiceField(choices=IMPORT_FORMATS)
    source = serializers.RegexField(
        SOURCE_NAME, required=False,
        help_text="The name imported labels are recorded under: their labeler is the inactive user "
                  "'<source>-import'. Default: the format's own (oasst, finegrained-rlhf, hh-rlhf, trl).")

    def validate_file(self, file):
        limit = settings.IMPORT_MAX_UPLOAD_MB
        if file.size > limit * 2**20:
            raise serializers.ValidationError(
                f"the file is {file.size / 2**20:.1f} MB; an upload takes at most {limit} MB (IMPORT_MAX_UPLOAD_MB). "
                "Split it, or import it with manage.py import_data.")
        return file


class ImportReportSerializer(serializers.Serializer):
    """What an import created and what it skipped."""

    format = serializers.CharField()
    source = serializers.CharField(help_text="The label source ('' for formats without labels).")
    records = serializers.IntegerField(help_text="Source records read: lines, array elements or CSV rows.")
    created = serializers.DictField(child=serializers.IntegerField(),
                                    help_text="prompts, demonstrations, rankings, candidates")
    duplicates = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="Prompts already in the project, and labels already imported from the same source.")
    rankings_by_k = serializers.DictField(child=serializers.IntegerField(), help_text="Created rankings by k.")
    ties = serializers.DictField(child=serializers.IntegerField(),
                                 help_text="Created rankings with a tie, and the tied pairs in them.")
    left_out = serializers.DictField(child=serializers.IntegerField(), help_text="reason → count")


class PromptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Prompt
        fields = ["id", "project", "text", "messages", "source", "author", "language", "tags", "split",
                  "content_hash", "created"]
        read_only_fields = fields


class PromptUpdateSerializer(serializers.ModelSerializer):
    class Meta:
        model = Prompt
        fields = ["language", "tags"]


class CandidateSerializer(serializers.ModelSerializer):
    class Meta:
        model = Candidate
        fields = ["id", "text"]


class TaskSerializer(serializers.ModelSerializer):
    """A task as a labeler sees it: the prompt and, for ranking, the candidates in display order.

    Candidates' origins are not shown, so labelers rank blind."""

    prompt = serializers.SerializerMethodField()
    candidates = serializers.SerializerMethodField()
    lease_expires = serializers.DateTimeField(read_only=True, default=None, allow_null=True)

    class Meta:
        model = Task
        fields = ["id", "kind", "project", "round", "prompt", "candidates", "target_overlap", "done_count",
                  "status", "lease_expires"]

    def get_prompt(self, task) -> dict:
        prompt = task.prompt
        return {"id": prompt.id, "text": prompt.text, "messages": prompt.messages, "language": prompt.language}

    def get_candidates(self, task) -> list[dict]:
        return [{"id": link.candidate.id, "text": link.candidate.text} for link in task.task_candidates.all()]

    def to_representation(self, task):
        data = super().to_representation(task)
        if task.is_gold:
            # A gold task has a slot for every member (annotation.gold): shown as they are, its counts would
            # tell labelers which tasks are gold. It looks like any task of its project that is still open.
            overlap = task.project.overlap
            data.update(target_overlap=overlap, done_count=min(task.done_count, overlap - 1))
        return data


_DATETIME = serializers.DateTimeField()


def task_data(task: queue.TaskRow, lease_expires) -> dict:
    """``TaskSerializer``'s output for a task the queue read with its lease, without the serializer's cost
    (next-task's hot path). tests/annotation/test_fast_payloads.py holds the two equal."""
    target_overlap, done_count = task.target_overlap, task.done_count
    if task.is_gold:  # as TaskSerializer.to_representation: a gold task looks like any open task
        target_overlap, done_count = task.project_overlap, min(done_count, task.project_overlap - 1)
    return {
        "id": task.id, "kind": task.kind, "project": task.project, "round": task.round,
        "prompt": {"id": task.prompt_id, "text": task.prompt_text, "messages": task.prompt_messages,
                   "language": task.prompt_language},
        "candidates": [{"id": c.id, "text": c.text} for c in task.candidates],
        "target_overlap": target_overlap, "done_count": done_count, "status": task.status,
        "lease_expires": _DATETIME.to_representation(lease_expires) if lease_expires is not None else None,
    }


class GoldSerializer(serializers.Serializer):
    gold_ranks = serializers.DictField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_K), allow_empty=False,
        help_text='The known answer, {"<candidate id>": rank}: 1 = best, every candidate of the task, '
                  "consecutive from 1 (ties share a rank), not all tied.")


class GoldOutSerializer(serializers.ModelSerializer):
    slots = serializers.IntegerField(source="target_overlap", read_only=True,
                                     help_text="Slots of the task: one per labeler who may get it.")

    class Meta:
        model = Task
        fields = ["id", "project", "is_gold", "gold_ranks", "slots", "done_count", "status"]
        read_only_fields = fields


class EntrySerializer(RequestBodySerializer):
    candidate = serializers.IntegerField(max_value=MAX_ID)
    rank = serializers.IntegerField(min_value=1, max_value=MAX_K)
    fails_instruction = serializers.BooleanField(default=False)
    hallucination = serializers.BooleanField(default=False)
    inappropriate = serializers.BooleanField(default=False)
    harmful = serializers.BooleanField(default=False)
    quality = serializers.IntegerField(min_value=1, max_value=7, required=False, allow_null=True, default=None)


class RankingSubmitSerializer(RequestBodySerializer):
    entries = EntrySerializer(many=True, min_length=2, max_length=MAX_K)
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000)
    seconds_spent = serializers.FloatField(min_value=0, max_value=7 * 24 * 3600)


class DemonstrationSubmitSerializer(RequestBodySerializer):
    text = serializers.CharField(max_length=100_000, trim_whitespace=False)
    seconds_spent = serializers.FloatField(min_value=0, max_value=7 * 24 * 3600)


class SkipSerializer(RequestBodySerializer):
    reason = serializers.CharField(max_length=500)


class PromptWritingTokenSerializer(serializers.Serializer):
    """What next-task answers for kind prompt_writing: a client token to submit the written prompt with."""

    kind = serializers.ChoiceField(choices=[TaskKind.PROMPT_WRITING])
    project = serializers.IntegerField(max_value=MAX_ID)
    client_token = serializers.UUIDField()


class NextTaskSerializer(RequestBodySerializer):
    kind = serializers.ChoiceField(choices=TaskKind.choices)


class RankingEntryOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = RankingEntry
        fields = ["candidate", "rank", "fails_instruction", "hallucination", "inappropriate", "harmful", "quality"]


class RankingSerializer(serializers.ModelSerializer):
    entries = RankingEntryOutSerializer(many=True, read_only=True)
    project = serializers.IntegerField(source="task.project_id", read_only=True)

    class Meta:
        model = Ranking
        fields = ["id", "task", "project", "labeler", "entries", "comment", "seconds_spent", "review_status",
                  "review_note", "revision", "created", "updated"]
        read_only_fields = fields


def ranking_data(ranking: Ranking) -> dict:
    """``RankingSerializer``'s output without the serializer's cost (submit-ranking's hot path), from a ranking
    with its task and entries loaded. tests/annotation/test_fast_payloads.py holds the two equal."""
    return {
        "id": ranking.pk, "task": ranking.task_id, "project": ranking.task.project_id, "labeler": ranking.labeler_id,
        "entries": [{"candidate": e.candidate_id, "rank": e.rank, "fails_instruction": e.fails_instruction,
                     "hallucination": e.hallucination, "inappropriate": e.inappropriate, "harmful": e.harmful,
                     "quality": e.quality} for e in ranking.entries.all()],
        "comment": ranking.comment, "seconds_spent": float(ranking.seconds_spent),
        "review_status": ranking.review_status, "review_note": ranking.review_note, "revision": ranking.revision,
        "created": _DATETIME.to_representation(ranking.created),
        "updated": _DATETIME.to_representation(ranking.updated),
    }


class DemonstrationSerializer(serializers.ModelSerializer):
    project = serializers.IntegerField(source="task.project_id", read_only=True)

    class Meta:
        model = Demonstration
        fields = ["id", "task", "project", "prompt", "author", "text", "seconds_spent", "review_status",
                  "review_note", "revision", "created", "updated"]
        read_only_fields = fields


class SkipOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = Skip
        fields = ["id", "task", "labeler", "reason", "created"]


class RoundSerializer(serializers.ModelSerializer):
    path = serializers.CharField(read_only=True, help_text='How the round trains its policy: "ppo" (SFT → RM → '
                                 'PPO), "rloo" (SFT → RM → RLOO) or "dpo" (SFT → DPO); "" before it starts.')

    class Meta:
        model = Round
        fields = ["id", "project", "number", "status", "path", "config", "comparison", "gate_note", "run",
                  "created", "started", "finished"]


class StartRoundSerializer(serializers.Serializer):
    config = serializers.JSONField(
        required=False, default=dict,
        help_text='{preset, path: "ppo" | "rloo" | "dpo", gate, and per-stage overrides: sft, rm, ppo, rloo, dpo, '
                  'evaluate, generate: {...}}',
    )


class TrainingJobSerializer(serializers.ModelSerializer):
    progress = serializers.FloatField(read_only=True)
    failure_reason = serializers.CharField(read_only=True)
    input_models = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = TrainingJob
        fields = ["id", "project", "round", "stage", "status", "step", "total", "progress", "eta_seconds", "metrics",
                  "config", "snapshot", "input_models", "result_model", "worker_host", "worker_pid", "attempts",
                  "max_attempts", "failure_reason", "round_run", "cancel_requested", "created", "started",
                  "finished"]
        read_only_fields = fields


class TrainingJobDetailSerializer(TrainingJobSerializer):
    class Meta(TrainingJobSerializer.Meta):
        fields = TrainingJobSerializer.Meta.fields + ["history", "log_tail", "error", "output_dir"]
        read_only_fields = fields


class StartStageSerializer(serializers.Serializer):
    stage = serializers.ChoiceField(choices=JobStage.choices)
    config = serializers.JSONField(required=False, default=dict)
    inputs = serializers.ListField(child=serializers.IntegerField(max_value=MAX_ID), required=False, default=list)


class ExportQuerySerializer(serializers.Serializer):
    """The query of a training-ready export (see annotation.exporting for the formats and columns)."""
    format = serializers.ChoiceField(choices=exporting.FORMATS)
    snapshot = serializers.IntegerField(max_value=MAX_ID, required=False, min_value=1,
                                        help_text="A snapshot's labels, not live ones.")
    round = serializers.IntegerField(max_value=MAX_ID, required=False, min_value=1,
                                     help_text="Round 1 includes imported tasks.")
    status = serializers.ChoiceField(choices=ReviewStatus.choices, required=False,
                                     help_text="Review status; without it, rejected labels are left out.")
    labeler = serializers.CharField(required=False, max_length=150, help_text="A labeler's username.")
    ties = serializers.ChoiceField(choices=exporting.TIES, required=False, help_text="trl-pairwise; default skip.")
    aggregate = serializers.ChoiceField(choices=exporting.AGGREGATES, required=False,
                                        help_text="trl-pairwise and listwise; default labelers.")


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = DatasetSnapshot
        fields = ["id", "project", "round", "content_hash", "files", "ranking_ids", "demonstration_ids", "created"]


class ModelVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = ["id", "project", "stage", "parent", "round", "snapshot", "name", "artifact_path", "config",
                  "metrics", "provenance", "created"]


class StatsSerializer(serializers.Serializer):
    ranking = serializers.DictField()
    demonstration = serializers.DictField()
    prompt_writing = serializers.DictField()
    skips = serializers.IntegerField()
    since = serializers.DateTimeField()


# --- Review ------------------------------------------------------------------------------------------------------


class ReviewQueueQuerySerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=list(reviews.LABEL_MODELS), default=TaskKind.RANKING)
    status = serializers.ChoiceField(choices=[*ReviewStatus.values, reviews.ALL_STATUSES],
                                     default=ReviewStatus.SUBMITTED, help_text="A review status, or all.")
    change_requested = serializers.BooleanField(
        default=False, help_text="Only labels whose labeler asked for a change that no review action answered yet.")


class ReviewDecisionSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=list(reviews.DECISIONS))
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000,
                                   help_text="Required to reject; the labeler reads it.")
    revision = serializers.IntegerField(max_value=MAX_ID,
        required=False, min_value=1, help_text="The revision you reviewed: 409 if the label changed since.")


class DemonstrationEditSerializer(serializers.Serializer):
    text = serializers.CharField(max_length=100_000, trim_whitespace=False)
    reason = serializers.CharField(max_length=10_000, help_text="Why you edit it; the labeler reads it.")
    revision = serializers.IntegerField(max_value=MAX_ID,
        required=False, min_value=1, help_text="The revision you edited: 409 if the label changed since.")


class ChangeRequestInSerializer(serializers.Serializer):
    message = serializers.CharField(max_length=2000, help_text="What should change, and why.")


class LabelRevisionSerializer(serializers.ModelSerializer):
    author_name = serializers.CharField(source="author.username", read_only=True)

    class Meta:
        model = LabelRevision
        fields = ["number", "author", "author_name", "content", "seconds_spent", "created"]
        read_only_fields = fields


class ChangeRequestSerializer(serializers.Serializer):
    """A labeler's request for a change to a frozen label (an AuditEvent "review.change_requested")."""

    id = serializers.IntegerField(read_only=True)
    author = serializers.IntegerField(source="actor_id", read_only=True, allow_null=True)
    author_name = serializers.CharField(source="actor_name", read_only=True)
    message = serializers.CharField(source="reason", read_only=True)
    revision = serializers.IntegerField(source="detail.revision", read_only=True, default=None, allow_null=True)
    open = serializers.BooleanField(read_only=True, default=True, help_text="No review action answered it yet.")
    created = serializers.DateTimeField(read_only=True)


class ReviewedResponseSerializer(serializers.Serializer):
    """A ranked candidate as the labeler left it, best first."""

    candidate = serializers.IntegerField(source="pk")
    number = serializers.IntegerField(help_text="Its position on the labeler's screen, from 1.")
    text = serializers.CharField()
    rank = serializers.IntegerField(source="entry.rank")
    fails_instruction = serializers.BooleanField(source="entry.fails_instruction")
    hallucination = serializers.BooleanField(source="entry.hallucination")
    inappropriate = serializers.BooleanField(source="entry.inappropriate")
    harmful = serializers.BooleanField(source="entry.harmful")
    quality = serializers.IntegerField(source="entry.quality", allow_null=True)


class ReviewItemSerializer(serializers.Serializer):
    """A label in the review queue with what a reviewer needs beside it."""

    kind = serializers.ChoiceField(choices=list(reviews.LABEL_MODELS), read_only=True)
    id = serializers.IntegerField(read_only=True)
    task = serializers.IntegerField(source="task_id", read_only=True)
    project = serializers.IntegerField(source="task.project_id", read_only=True)
    prompt = serializers.SerializerMethodField()
    labeler = serializers.IntegerField(source="owner.pk", read_only=True)
    labeler_name = serializers.CharField(source="owner.username", read_only=True)
    revision = serializers.IntegerField(read_only=True)
    review_status = serializers.ChoiceField(choices=ReviewStatus.choices, read_only=True)
    review_note = serializers.CharField(read_only=True)
    in_snapshot = serializers.BooleanField(read_only=True)
    seconds_spent = serializers.FloatField(read_only=True)
    is_gold = serializers.BooleanField(source="task.is_gold", read_only=True)
    text = serializers.CharField(read_only=True, default=None, allow_null=True, help_text="A demonstration's text.")
    comment = serializers.CharField(read_only=True, default=None, allow_null=True, help_text="A ranking's comment.")
    responses = ReviewedResponseSerializer(source="cards", many=True, read_only=True,
                                           help_text="A ranking's candidates, best first ([] for a demonstration).")
    revisions = LabelRevisionSerializer(source="history", many=True, read_only=True)
    change_requests = ChangeRequestSerializer(source="requests", many=True, read_only=True)
    quality = serializers.JSONField(
        source="signals", read_only=True, allow_null=True,
        help_text="Agreement and gold results (annotation.quality.review_signals); null where none are computed.")
    created = serializers.DateTimeField(read_only=True)
    updated = serializers.DateTimeField(read_only=True)

    def get_prompt(self, label) -> dict:
        prompt = label.task.prompt
        return {"id": prompt.id, "text": prompt.text, "messages": prompt.messages}
