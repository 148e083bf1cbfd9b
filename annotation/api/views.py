"""REST API views: the serializer validates shape → ``access_*`` → one service call → response."""
from __future__ import annotations

import platform
import sysconfig
import tempfile
import uuid
from pathlib import Path

from django.db import connection
from django.http import FileResponse, Http404, JsonResponse, StreamingHttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import access, exporting, gold, memberships, quality, reviews, services, stats
from ..importing import read_import_file
from ..imports.importer import import_upload
from ..loop import rounds
from ..loop.snapshots import snapshot_file
from ..models import (
    DatasetSnapshot,
    Demonstration,
    Membership,
    ModelVersion,
    Project,
    Prompt,
    Ranking,
    Role,
    Round,
    Task,
    TaskKind,
    TaskSlot,
    TrainingJob,
)
from . import filters
from . import serializers as s


def health(request):
    """Liveness for load balancers and the shadowing check: which ``platform`` module this process uses."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    stdlib = sysconfig.get_paths()["stdlib"]
    return JsonResponse({
        "ok": True,
        "database": connection.vendor,
        "platform_system": platform.system(),
        "platform_is_stdlib": platform.__file__.startswith(stdlib),
    })


def render_task(task_id: int, lease_expires) -> dict:
    task = Task.objects.for_display().select_related("project").get(pk=task_id)
    task.lease_expires = lease_expires
    return s.TaskSerializer(task).data


class DatasetFormatNegotiation(DefaultContentNegotiation):
    """The export's ``format`` parameter names a dataset format, not a renderer (DRF's own meaning of
    ``?format=``): it is left to the serializer, and errors render as JSON."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ProjectViewSet(viewsets.ModelViewSet):
    """Projects you belong to. Site admins create and delete; project admins change settings."""
    queryset = Project.objects.none()  # for the schema; get_queryset() scopes it to the user

    serializer_class = s.ProjectSerializer

    def get_queryset(self):
        return access.projects_with_role(self.request.user)

    def get_object(self):
        min_role = Role.LABELER if self.request.method in ("GET", "HEAD", "OPTIONS") else Role.ADMIN
        return access.access_project_by_id(self.request.user, self.kwargs["pk"], min_role=min_role)

    def get_serializer_class(self):
        return s.ProjectCreateSerializer if self.action == "create" else s.ProjectSerializer

    @extend_schema(request={"multipart/form-data": s.ProjectCreateSerializer,
                            "application/json": s.ProjectCreateSerializer},
                   responses={201: s.ProjectSerializer})
    def create(self, request, *args, **kwargs):
        """Create a project (site admins), optionally with its base model and a prompt file, all or nothing:
        a bad setting or a bad line (reported with its number) creates nothing. No labels are made."""
        if not request.user.is_staff:
            raise PermissionDenied("Only site admins create projects.")
        body = s.ProjectCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        upload, fmt = data.pop("prompts", None), data.pop("prompts_format")
        items, lines, left_out = read_uploaded_prompts(upload, fmt) if upload else ([], [], 0)
        project, result = services.create_project(admin=request.user, base=data.pop("base_model", None),
                                                  prompts=items, line_numbers=lines, **data)
        return Response({**s.ProjectSerializer(project).data,
                         "imported": {"created": len(result.created), "duplicates": len(result.duplicates),
                                      "left_out": left_out}}, status=201)

    def perform_destroy(self, instance):
        if not self.request.user.is_staff:
            raise PermissionDenied("Only site admins delete projects.")
        services.delete_unlabeled(obj=instance)

    @extend_schema(request=s.NextTaskSerializer, responses={200: PolymorphicProxySerializer(
        component_name="NextTask", serializers=[s.TaskSerializer, s.PromptWritingTokenSerializer],
        resource_type_field_name=None), 204: None})
    @action(detail=True, methods=["post"], url_path="next-task")
    def next_task(self, request, pk=None):
        """Lease the next task of a kind (204 when none is left); asking again returns the same task."""
        body = s.NextTaskSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        project = access.access_project_by_id(request.user, pk)
        kind = body.validated_data["kind"]
        if kind == TaskKind.PROMPT_WRITING:
            if not project.prompt_writing_enabled:
                return Response(status=status.HTTP_204_NO_CONTENT)
            return Response({"kind": kind, "project": project.pk, "client_token": str(uuid.uuid4())})
        lease = services.next_task(user=request.user, project=project, kind=kind)
        if lease is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(s.task_data(lease.task, lease.expires))

    @extend_schema(request=s.WritePromptSerializer, responses={201: s.PromptSerializer, 200: s.PromptSerializer})
    @action(detail=True, methods=["post"], url_path="write-prompt")
    def write_prompt(self, request, pk=None):
        """Submit a prompt written by a labeler; idempotent on ``client_token``."""
        body = s.WritePromptSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        project = access.access_project_by_id(request.user, pk)
        data = dict(body.validated_data)
        token = data.pop("client_token")
        prompt, created = services.write_prompt(author=request.user, project=project, item=data, client_token=token)
        return Response(s.PromptSerializer(prompt).data, status=201 if created else 200)

    @extend_schema(request=s.StartRoundSerializer, responses={201: s.RoundSerializer})
    @action(detail=True, methods=["post"], url_path="start-round")
    def start_round(self, request, pk=None):
        """Start a training round on the labels collected so far: snapshot → SFT → RM → PPO (or the config's
        path: SFT → RM → RLOO, SFT → DPO) → evaluate → generate → the next round's ranking tasks (admins)."""
        body = s.StartRoundSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        project = access.access_project_by_id(request.user, pk, min_role=Role.ADMIN)
        round_ = rounds.start_round(project=project, config=body.validated_data["config"])
        return Response(s.RoundSerializer(round_).data, status=201)

    @extend_schema(request=s.StartStageSerializer, responses={201: s.TrainingJobSerializer})
    @action(detail=True, methods=["post"], url_path="start-stage")
    def start_stage(self, request, pk=None):
        """Run one stage on its own, on a fresh snapshot, with the given input model versions (admins)."""
        body = s.StartStageSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        project = access.access_project_by_id(request.user, pk, min_role=Role.ADMIN)
        inputs = list(ModelVersion.objects.filter(project=project, pk__in=body.validated_data["inputs"]))
        job = rounds.start_stage(project=project, stage=body.validated_data["stage"],
                                 config=body.validated_data["config"], inputs=inputs)
        return Response(s.TrainingJobSerializer(job).data, status=201)

    @extend_schema(request={"multipart/form-data": s.ImportSerializer},
                   responses={201: s.ImportReportSerializer, 200: s.ImportReportSerializer})
    @action(detail=True, methods=["post"], url_path="import")
    def import_data(self, request, pk=None):
        """Import a file of prompts, demonstrations and rankings (admins), all or nothing: any bad line
        (reported with its number) imports nothing. 201 with the report when anything was created, 200
        when everything was already there."""
        project = access.access_project_by_id(request.user, pk, min_role=Role.ADMIN)
        body = s.ImportSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        report = import_upload(project=project, upload=data["file"], fmt=data["format"], source=data.get("source"))
        return Response(report, status=201 if any(report["created"].values()) else 200)

    @extend_schema(methods=["GET"], responses=s.MembershipSerializer(many=True))
    @extend_schema(methods=["POST"], request=s.MemberRoleSerializer,
                   responses={201: s.MembershipSerializer, 200: s.MembershipSerializer})
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def members(self, request, pk=None):
        """List members (reviewers and admins), or change a member's role (admins). New members come by
        invitation (``…/invitations/``); only site staff add an account directly."""
        min_role = Role.REVIEWER if request.method == "GET" else Role.ADMIN
        project = access.access_project_by_id(request.user, pk, min_role=min_role)
        if request.method == "GET":
            members = Membership.objects.filter(project=project).select_related("user").order_by("id")
            return Response(s.MembershipSerializer(members, many=True).data)
        body = s.MemberRoleSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        membership, created = memberships.set_member(admin=request.user, project=project,
                                                     user_id=body.validated_data["user"],
                                                     role=body.validated_data["role"])
        return Response(s.MembershipSerializer(membership).data, status=201 if created else 200)

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["delete"], url_path=r"members/(?P<user_id>[0-9]+)")
    def remove_member(self, request, pk=None, user_id=None):
        """Remove a member (admins). Their labels stay."""
        project = access.access_project_by_id(request.user, pk, min_role=Role.ADMIN)
        memberships.remove_member(admin=request.user, project=project, user_id=int(user_id))
        return Response(status=204)

    @extend_schema(request=s.InvitationSerializer, responses={200: s.InvitationSerializer(many=True),
                                                              201: s.NewInvitationSerializer})
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def invitations(self, request, pk=None):
        """The project's invitations, or a new one (admins): the response holds its secret link, once."""
        project = access.access_project_by_id(request.user, pk, min_role=Role.ADMIN)
        if request.method == "GET":
            rows = project.invitations.select_related("invited_by", "accepted_by")
            return Response(s.InvitationSerializer(rows, many=True).data)
        body = s.InvitationSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        invitation, secret = memberships.invite(admin=request.user, project=project,
                                                role=body.validated_data.get("role", Role.LABELER),
                                                note=body.validated_data.get("note", ""),
                                                days=body.validated_data["days"])
        invitation.secret, invitation.url = secret, reverse("labeling:invitation", args=[secret])
        return Response(s.NewInvitationSerializer(invitation).data, status=201)

    @extend_schema(request=None, responses=s.InvitationSerializer)
    @action(detail=True, methods=["post"], url_path=r"invitations/(?P<invitation_id>[0-9]+)/revoke")
    def revoke_invitation(self, request, pk=None, invitation_id=None):
        """Revoke a pending invitation (admins)."""
        project = access.access_project_by_id(request.user, pk, min_role=Role.ADMIN)
        invitation = memberships.revoke(admin=request.user, project=project, invitation_id=int(invitation_id))
        return Response(s.InvitationSerializer(invitation).data)

    @extend_schema(parameters=[s.ReviewQueueQuerySerializer], responses=s.ReviewItemSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="review-queue")
    def review_queue(self, request, pk=None):
        """Labels for review (reviewers and admins), oldest first, paginated: each with its content, labeler,
        revisions, change requests, and agreement and gold results where computed. Your own labels are left
        out: someone else reviews them."""
        query = s.ReviewQueueQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        project = access.access_project_by_id(request.user, pk, min_role=Role.REVIEWER)
        kind = query.validated_data["kind"]
        queue = reviews.review_queue(project=project, reviewer=request.user, **query.validated_data)
        page = self.paginate_queryset(reviews.for_review(queue, kind))
        items = reviews.attach_review_context(kind, page)
        return self.get_paginated_response(s.ReviewItemSerializer(items, many=True).data)

    @extend_schema(parameters=[s.ExportQuerySerializer], responses={(200, "application/x-ndjson"): bytes})
    @action(detail=True, methods=["get"], content_negotiation_class=DatasetFormatNegotiation)
    def export(self, request, pk=None):
        """Stream a training-ready export of the project's labels as JSON lines (admins): SFT, TRL pairwise,
        listwise or per-labeler, from a snapshot or the live labels (``manage.py export_data`` writes Parquet
        and DatasetDicts too)."""
        project = access.access_project_by_id(request.user, pk, min_role=Role.ADMIN)
        query = s.ExportQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        options = exporting.export_options(project=project, **query.validated_data)
        response = StreamingHttpResponse(exporting.jsonl_chunks(exporting.rows(project, options)),
                                         content_type="application/x-ndjson")
        response["Content-Disposition"] = f'attachment; filename="project-{project.pk}-{options.format}.jsonl"'
        return response

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"], url_path="quality")
    def quality_report(self, request, pk=None):
        """The project's quality, computed from the current labels (reviewers and admins): Kendall's W per
        task, Krippendorff's alpha for the project and per round, each labeler's agreement with the others'
        consensus and gold accuracy, position bias, counts per round and the distributions of k and of
        response lengths (``annotation.quality`` defines each number)."""
        project = access.access_project_by_id(request.user, pk, min_role=Role.REVIEWER)
        return Response(quality.project_quality(project))


def read_uploaded_prompts(upload, fmt: str):
    """An uploaded prompt file read like ``manage.py import_prompts`` reads one (line-numbered errors)."""
    suffix = ".jsonl.gz" if upload.name.endswith(".gz") else ".jsonl"
    with tempfile.NamedTemporaryFile(suffix=suffix) as copy:
        for chunk in upload.chunks():
            copy.write(chunk)
        copy.flush()
        return read_import_file(Path(copy.name), fmt=fmt)


class BaseModelViewSet(viewsets.ReadOnlyModelViewSet):
    """Base models registered for the whole site (``manage.py register_base``), with their provenance:
    what a project's admin may pick as the project's base model."""
    queryset = ModelVersion.objects.none()  # for the schema; get_queryset() lists the registered bases
    serializer_class = s.ModelVersionSerializer

    def get_queryset(self):
        return ModelVersion.objects.registered_bases().order_by("id")


class PromptViewSet(viewsets.ModelViewSet):
    """Prompts: reviewers and admins read their projects'; admins create, edit and delete; labelers
    read the prompts they wrote."""
    queryset = Prompt.objects.none()  # for the schema; get_queryset() scopes it to the user

    filterset_class = filters.PromptFilter
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        if self.request.method in ("GET", "HEAD", "OPTIONS"):
            return access.prompts_visible_to(self.request.user).order_by("id")
        return access.prompts_editable_by(self.request.user).order_by("id")

    def get_serializer_class(self):
        return {"create": s.PromptCreateSerializer, "partial_update": s.PromptUpdateSerializer}.get(
            self.action, s.PromptSerializer)

    def get_object(self):
        for_change = self.request.method not in ("GET", "HEAD", "OPTIONS")
        return access.access_prompt_by_id(self.request.user, self.kwargs["pk"], for_change=for_change)

    def create(self, request, *args, **kwargs):
        body = s.PromptCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        project = access.access_project_by_id(request.user, data.pop("project"), min_role=Role.ADMIN)
        result = services.bulk_create_prompts(project=project, items=[data], author=request.user)
        prompt = (result.created or result.duplicates)[0]
        return Response(s.PromptSerializer(prompt).data, status=201 if result.created else 200)

    def perform_destroy(self, instance):
        services.delete_unlabeled(obj=instance)

    @extend_schema(request=s.BulkPromptSerializer)
    @action(detail=False, methods=["post"])
    def bulk(self, request):
        """Create many prompts at once, all or nothing; errors are keyed by item index."""
        body = s.BulkPromptSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        project = access.access_project_by_id(request.user, body.validated_data["project"], min_role=Role.ADMIN)
        result = services.bulk_create_prompts(project=project, items=body.validated_data["items"], author=request.user)
        return Response({"created": [p.pk for p in result.created], "duplicates": [p.pk for p in result.duplicates]},
                        status=201)


class TaskViewSet(mixins.RetrieveModelMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """Tasks. Reviewers and admins list their projects' tasks; labelers see the tasks they hold or did."""
    queryset = Task.objects.none()  # for the schema; get_queryset() scopes it to the user

    serializer_class = s.TaskSerializer
    filterset_class = filters.TaskFilter

    def get_queryset(self):
        return access.tasks_visible_to(self.request.user).for_display().select_related("project").order_by("id")

    def retrieve(self, request, pk=None):
        task = access.access_task_by_id(request.user, pk)
        lease_expires = (TaskSlot.objects.filter(task=task, labeler=request.user, status=TaskSlot.Status.LEASED)
                         .values_list("lease_expires", flat=True).first())
        return Response(render_task(task.pk, lease_expires))

    @extend_schema(request=s.RankingSubmitSerializer, responses={201: s.RankingSerializer})
    @action(detail=True, methods=["post"], url_path="submit-ranking")
    def submit_ranking(self, request, pk=None):
        """Rank the task's candidates (1 = best, ties share a rank). A retry returns 200 and the first ranking."""
        body = s.RankingSubmitSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        task = access.access_task_by_id(request.user, pk)
        ranking, created = services.submit_ranking(labeler=request.user, task=task, **body.validated_data)
        return Response(s.ranking_data(ranking), status=201 if created else 200)

    @extend_schema(request=s.DemonstrationSubmitSerializer, responses={201: s.DemonstrationSerializer})
    @action(detail=True, methods=["post"], url_path="submit-demonstration")
    def submit_demonstration(self, request, pk=None):
        """Write the ideal response to the task's prompt. A retry returns 200 and the first one."""
        body = s.DemonstrationSubmitSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        task = access.access_task_by_id(request.user, pk)
        demo, created = services.submit_demonstration(author=request.user, task=task, **body.validated_data)
        return Response(s.DemonstrationSerializer(demo).data, status=201 if created else 200)

    @extend_schema(request=s.SkipSerializer, responses={201: s.SkipOutSerializer, 200: s.SkipOutSerializer})
    @action(detail=True, methods=["post"])
    def skip(self, request, pk=None):
        """Skip with a reason; the slot goes back to the pool and the task is not offered to you again."""
        body = s.SkipSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        task = access.access_task_by_id(request.user, pk)
        skip, created = services.skip_task(labeler=request.user, task=task, reason=body.validated_data["reason"])
        return Response(s.SkipOutSerializer(skip).data, status=201 if created else 200)

    @extend_schema(request=None, responses={200: s.TaskSerializer, 204: None})
    @action(detail=True, methods=["post"], url_path="undo-skip")
    def undo_skip(self, request, pk=None):
        """Forget your skip of this task and lease it back to you (200 with the task; 204 if there was no
        skip, or its slots were taken meanwhile)."""
        task = access.access_task_by_id(request.user, pk)
        lease = services.undo_skip(labeler=request.user, task=task)
        if lease is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(render_task(lease.task_id, lease.expires))

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["post"])
    def release(self, request, pk=None):
        """Give your lease back without skipping (the task may be offered to you again later)."""
        task = access.access_task_by_id(request.user, pk)
        services.release_task(labeler=request.user, task=task)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=s.GoldSerializer, responses={200: s.GoldOutSerializer})
    @action(detail=True, methods=["get", "post", "delete"], url_path="gold")
    def gold_answer(self, request, pk=None):
        """A ranking task's gold status and known answer (reviewers and admins). POST marks it gold with its
        answer, or replaces the answer; DELETE makes it an ordinary task again (admins; both audited)."""
        task = access.access_task_by_id(request.user, pk, min_role=Role.REVIEWER if request.method == "GET"
                                        else Role.ADMIN)
        if request.method == "POST":
            body = s.GoldSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            task = gold.mark_gold(admin=request.user, task=task, gold_ranks=body.validated_data["gold_ranks"])
        elif request.method == "DELETE":
            task = gold.unmark_gold(admin=request.user, task=task)
        return Response(s.GoldOutSerializer(task).data)


class RankingViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Ranking.objects.none()  # for the schema; get_queryset() scopes it to the user
    serializer_class = s.RankingSerializer
    filterset_class = filters.RankingFilter

    def get_queryset(self):
        return (access.rankings_visible_to(self.request.user).select_related("task")
                .prefetch_related("entries").order_by("id"))

    @extend_schema(request=s.RankingSubmitSerializer, responses=s.RankingSerializer)
    @action(detail=True, methods=["post"])
    def correct(self, request, pk=None):
        """Replace your ranking while its round is open; it stays one ranking (same id)."""
        body = s.RankingSubmitSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        ranking = access.access_own_ranking(request.user, pk)
        ranking = services.correct_ranking(labeler=request.user, ranking=ranking, **body.validated_data)
        return Response(s.RankingSerializer(ranking).data)

    @extend_schema(request=s.ReviewDecisionSerializer, responses=s.RankingSerializer)
    @action(detail=True, methods=["post"])
    def review(self, request, pk=None):
        """Accept or reject a ranking (reviewers and admins of its project, never on their own labels); a
        reason is required to reject. A later decision replaces an earlier one; each is audited."""
        body = s.ReviewDecisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        ranking = access.access_ranking_for_review(request.user, pk)
        ranking = reviews.review_label(reviewer=request.user, label=ranking, **body.validated_data)
        return Response(s.RankingSerializer(ranking).data)

    @extend_schema(request=s.ChangeRequestInSerializer,
                   responses={201: s.ChangeRequestSerializer, 200: s.ChangeRequestSerializer})
    @action(detail=True, methods=["post"], url_path="request-change")
    def request_change(self, request, pk=None):
        """Ask a reviewer to change your ranking once you can no longer correct it (reviewed, in a snapshot,
        or its round closed); the same message again returns the first request (200)."""
        body = s.ChangeRequestInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        ranking = access.access_own_ranking(request.user, pk)
        event, created = reviews.request_change(labeler=request.user, label=ranking, **body.validated_data)
        return Response(s.ChangeRequestSerializer(event).data, status=201 if created else 200)


class DemonstrationViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Demonstration.objects.none()  # for the schema; get_queryset() scopes it to the user
    serializer_class = s.DemonstrationSerializer
    filterset_class = filters.DemonstrationFilter

    def get_queryset(self):
        return access.demonstrations_visible_to(self.request.user).select_related("task").order_by("id")

    @extend_schema(request=s.DemonstrationSubmitSerializer, responses=s.DemonstrationSerializer)
    @action(detail=True, methods=["post"])
    def correct(self, request, pk=None):
        """Replace your demonstration's text while its round is open (same id)."""
        body = s.DemonstrationSubmitSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        demo = access.access_own_demonstration(request.user, pk)
        demo = services.correct_demonstration(author=request.user, demonstration=demo, **body.validated_data)
        return Response(s.DemonstrationSerializer(demo).data)

    @extend_schema(request=s.ReviewDecisionSerializer, responses=s.DemonstrationSerializer)
    @action(detail=True, methods=["post"])
    def review(self, request, pk=None):
        """Accept or reject a demonstration, as for a ranking."""
        body = s.ReviewDecisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        demo = access.access_demonstration_for_review(request.user, pk)
        demo = reviews.review_label(reviewer=request.user, label=demo, **body.validated_data)
        return Response(s.DemonstrationSerializer(demo).data)

    @extend_schema(request=s.DemonstrationEditSerializer, responses=s.DemonstrationSerializer)
    @action(detail=True, methods=["post"])
    def edit(self, request, pk=None):
        """A reviewer's edit: a new revision by the reviewer (the labeler's stays) that becomes the text, and
        the demonstration is accepted with the reason as its note."""
        body = s.DemonstrationEditSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        demo = access.access_demonstration_for_review(request.user, pk)
        demo = reviews.edit_demonstration(reviewer=request.user, demonstration=demo, **body.validated_data)
        return Response(s.DemonstrationSerializer(demo).data)

    @extend_schema(request=s.ChangeRequestInSerializer,
                   responses={201: s.ChangeRequestSerializer, 200: s.ChangeRequestSerializer})
    @action(detail=True, methods=["post"], url_path="request-change")
    def request_change(self, request, pk=None):
        """Ask a reviewer to change your demonstration, as for a ranking."""
        body = s.ChangeRequestInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        demo = access.access_own_demonstration(request.user, pk)
        event, created = reviews.request_change(labeler=request.user, label=demo, **body.validated_data)
        return Response(s.ChangeRequestSerializer(event).data, status=201 if created else 200)


class RoundViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Round.objects.none()  # for the schema; get_queryset() scopes it to the user
    serializer_class = s.RoundSerializer
    filterset_class = filters.RoundFilter

    def get_queryset(self):
        return access.rounds_visible_to(self.request.user).order_by("id")

    @extend_schema(request=None, responses=s.RoundSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel a training round: its running job stops at its next step (admins)."""
        round_ = access.access_managed(request.user, access.rounds_visible_to(request.user), pk, "round")
        return Response(s.RoundSerializer(rounds.cancel_round(round=round_)).data)


class TrainingJobViewSet(viewsets.ReadOnlyModelViewSet):
    """Training jobs with live progress; the detail adds the metrics history (for charts) and the log."""
    queryset = TrainingJob.objects.none()  # for the schema; get_queryset() scopes it to the user

    filterset_class = filters.TrainingJobFilter

    def get_queryset(self):
        return access.jobs_visible_to(self.request.user).prefetch_related("input_models").order_by("-id")

    def get_serializer_class(self):
        return s.TrainingJobDetailSerializer if self.action != "list" else s.TrainingJobSerializer

    @extend_schema(request=None, responses=s.TrainingJobSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        job = access.access_managed(request.user, access.jobs_visible_to(request.user), pk, "job")
        rounds.cancel_job(job=job)
        job.refresh_from_db()
        return Response(s.TrainingJobSerializer(job).data)

    @extend_schema(request=None, responses=s.TrainingJobSerializer)
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Queue a failed or cancelled job again; it resumes from its checkpoint when it has one."""
        job = access.access_managed(request.user, access.jobs_visible_to(request.user), pk, "job")
        return Response(s.TrainingJobSerializer(rounds.retry_job(job=job)).data)


class SnapshotViewSet(viewsets.ReadOnlyModelViewSet):
    """Immutable, content-hashed exports of a project's labels in the training data contracts."""
    queryset = DatasetSnapshot.objects.none()  # for the schema; get_queryset() scopes it to the user

    serializer_class = s.SnapshotSerializer
    filterset_fields = ["project", "round"]

    def get_queryset(self):
        return access.snapshots_visible_to(self.request.user).order_by("-id")

    @extend_schema(responses={(200, "application/x-ndjson"): bytes})
    @action(detail=True, methods=["get"], url_path=r"files/(?P<name>[a-z_]+\.jsonl)")
    def download(self, request, pk=None, name=None):
        """Download one of the snapshot's JSONL files."""
        snapshot = self.get_object()
        path = snapshot_file(snapshot, name)
        if path is None or not path.exists():
            raise Http404("No such file in this snapshot.")
        return FileResponse(path.open("rb"), as_attachment=True, filename=f"{snapshot.content_hash[:12]}-{name}",
                            content_type="application/x-ndjson")


class ModelVersionViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = ModelVersion.objects.none()  # for the schema; get_queryset() scopes it to the user
    serializer_class = s.ModelVersionSerializer
    filterset_class = filters.ModelVersionFilter

    def get_queryset(self):
        return access.model_versions_visible_to(self.request.user).order_by("id")

    @action(detail=True, methods=["get"])
    def lineage(self, request, pk=None):
        """The version's ancestors (e.g. PPO → SFT → base; RLOO or DPO in place of PPO, by the round's path),
        each with the snapshot and labels it was trained on, and the other models its job consumed (PPO's or
        RLOO's reward model)."""
        return Response(lineage_of(self.get_object()))


def lineage_of(version: ModelVersion) -> dict:
    chain = []
    for model in version.lineage():
        job = model.produced_by.prefetch_related("input_models").first()
        snapshot = model.snapshot
        chain.append({
            **s.ModelVersionSerializer(model).data,
            "job": job.pk if job else None,
            "inputs": [m.pk for m in job.input_models.all()] if job else [],
            "labels": {"snapshot": snapshot.content_hash if snapshot else None,
                       "rankings": snapshot.ranking_ids if snapshot else [],
                       "demonstrations": snapshot.demonstration_ids if snapshot else []},
        })
    return {"model": version.pk, "lineage": chain}


class CandidateLineageView(APIView):
    @extend_schema(responses=dict)
    def get(self, request, pk):
        """From a generated candidate to the model that produced it and the labels that trained it."""
        candidate = access.access_candidate_by_id(request.user, pk)
        if candidate.model_version is None:
            return Response({"candidate": candidate.pk, "origin": candidate.origin, "lineage": []})
        return Response({"candidate": candidate.pk, "origin": candidate.origin,
                         "generation_params": candidate.generation_params, "seed": candidate.seed,
                         **lineage_of(candidate.model_version)})


class MyStatsView(APIView):
    @extend_schema(responses=s.StatsSerializer)
    def get(self, request):
        """Your counts and median seconds per task kind, all time and today."""
        return Response(stats.labeler_stats(user=request.user))


class InvitationAnswerView(APIView):
    """Accept or decline an invitation with its secret (any logged-in user holding the link)."""

    answer = "accept"

    @extend_schema(request=s.InvitationAnswerSerializer, responses={200: s.MembershipSerializer, 204: None})
    def post(self, request):
        body = s.InvitationAnswerSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if self.answer == "accept":
            membership = memberships.accept(user=request.user, secret=body.validated_data["secret"])
            return Response(s.MembershipSerializer(membership).data)
        memberships.decline(user=request.user, secret=body.validated_data["secret"])
        return Response(status=204)
