"""The labeler web UI: server-rendered pages; the task pages talk to the REST API for every write, so
leases, validation and idempotency live in services.py only."""
from __future__ import annotations

import json
import uuid

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST, require_safe
from rest_framework.exceptions import NotFound

from . import access, memberships, quality, reviews, services, stats
from .errors import Conflict
from .formats import FORMATS
from .imports import readers
from .loop.config import PATHS, PRESETS, preset
from .models import Demonstration, ModelVersion, Ranking, ReviewStatus, Role, Task, TaskKind, TaskSlot, TrainingJob
from .rendering import render_markdown

KIND_PAGES = {TaskKind.RANKING: "annotation/rank.html", TaskKind.DEMONSTRATION: "annotation/demonstrate.html"}


def labeler_page(view):
    """Login required (the Content-Security-Policy is set on every HTML page by annotation.middleware)."""
    return login_required(view)


@labeler_page
def home(request):
    projects = list(access.projects_with_role(request.user).order_by("name"))
    rows = [{"project": p, "waiting": stats.waiting_counts(user=request.user, project=p),
             "review": _review_waiting(request.user, p)} for p in projects]
    return render(request, "annotation/home.html", {"rows": rows, "stats": stats.labeler_stats(user=request.user)})


def _task_context(request, project, kind: str, task_id: int | None = None) -> dict:
    """A task page's panel. A GET changes nothing: it shows ``task_id`` if the user holds it, else the task
    they hold of ``kind``, else a panel that asks for the next one (its script POSTs at once; without
    script, a button). Only a POST leases the next task (link previews and prefetchers send GETs)."""
    if task_id is not None:
        held = TaskSlot.objects.filter(task_id=task_id, project=project, labeler=request.user,
                                       status=TaskSlot.Status.LEASED).first()
        lease = services.Lease(task_id=task_id, expires=held.lease_expires) if held else None
    elif request.method == "POST":
        lease = services.next_task(user=request.user, project=project, kind=kind)
    else:
        lease = services.held_lease(user=request.user, project=project, kind=kind)
    task = None
    if lease is not None:
        task = _task_for_page(lease.task_id)
        task.lease_expires = lease.expires
    claim = task is None and task_id is None and request.method != "POST"
    return {"project": project, "task": task, "kind": kind, "claim": claim}


def _task_for_page(task_id: int) -> Task:
    task = Task.objects.for_display().get(pk=task_id)
    task.cards = [link.candidate for link in task.task_candidates.all()]
    return task


def _kind_from(request_kind: str) -> str:
    if request_kind not in KIND_PAGES:
        raise Http404("No such task kind.")
    return request_kind


@labeler_page
@require_http_methods(["GET", "POST"])
def task_page(request, project_id: int, kind: str):
    """A ranking or demonstration page: the task the user holds, or (POST) the next one leased; later
    tasks arrive as fragments."""
    kind = _kind_from(kind)
    project = access.access_project_by_id(request.user, project_id)
    if not project.kind_enabled(kind):
        raise Http404("This task kind is not enabled in the project.")
    return render(request, KIND_PAGES[kind], _task_context(request, project, kind))


@labeler_page
@require_http_methods(["GET", "POST"])
def task_fragment(request, project_id: int, kind: str):
    """The task panel alone: POST leases the next task; GET shows the task the user holds, or with
    ?task=ID that task if they hold it (after an undo)."""
    kind = _kind_from(kind)
    project = access.access_project_by_id(request.user, project_id)
    task_id = int(request.GET["task"]) if request.GET.get("task", "").isdigit() else None
    context = _task_context(request, project, kind, task_id)
    return render(request, f"annotation/_{kind}_panel.html", context)


@labeler_page
def write_prompt_page(request, project_id: int):
    project = access.access_project_by_id(request.user, project_id)
    if not project.prompt_writing_enabled:
        raise Http404("Prompt writing is not enabled in this project.")
    return render(request, "annotation/write_prompt.html", {"project": project, "client_token": uuid.uuid4()})


@labeler_page
def history(request):
    rankings = (Ranking.objects.filter(labeler=request.user).select_related("task__prompt", "task__project",
                                                                              "task__round").order_by("-created"))
    demos = (Demonstration.objects.filter(author=request.user)
             .select_related("task__prompt", "task__project", "task__round").order_by("-created"))
    kind = TaskKind.DEMONSTRATION if request.GET.get("kind") == TaskKind.DEMONSTRATION else TaskKind.RANKING
    rows = rankings if kind == TaskKind.RANKING else demos
    page = Paginator(rows, 25).get_page(request.GET.get("page"))
    requested = reviews.open_change_requests(kind, page.object_list)
    return render(request, "annotation/history.html", {"page": page, "kind": kind, "requested": requested})


def _review_waiting(user, project) -> int | None:
    """Labels waiting for a reviewer's first decision, for the home page (None: the user does not review)."""
    if not user.is_staff and project.user_role not in (Role.REVIEWER, Role.ADMIN):
        return None
    return sum(reviews.waiting_counts(project=project, reviewer=user).values())


def _review_filters(request) -> dict:
    """Which queue a review page shows, from its query string: the labels waiting for a decision by default."""
    kind = request.GET.get("kind", TaskKind.RANKING)
    status = request.GET.get("status", ReviewStatus.SUBMITTED)
    if kind not in reviews.LABEL_MODELS or status not in (*ReviewStatus.values, reviews.ALL_STATUSES):
        raise Http404("No such review queue.")
    return {"kind": kind, "status": status, "change_requested": request.GET.get("change_requested") == "1"}


def _review_context(request, project, **cursor) -> dict:
    """One label of the queue (see ``reviews.neighbour`` for the cursor), with where it stands in the queue."""
    filters = _review_filters(request)
    queue = reviews.review_queue(project=project, reviewer=request.user, **filters)
    label = reviews.neighbour(reviews.for_review(queue, filters["kind"]), **cursor)
    if label is not None:
        reviews.attach_review_context(filters["kind"], [label])
    return {"project": project, "filters": filters, "label": label, "waiting": queue.count(),
            "position": queue.filter(pk__lt=label.pk).count() + 1 if label else None,
            "cursor": cursor.get("after") or cursor.get("before") or ""}


@labeler_page
@require_safe
def review_page(request, project_id: int):
    """The review queue, one label at a time (reviewers and admins); the next labels arrive as fragments and
    every decision is a POST to the API."""
    project = access.access_project_by_id(request.user, project_id, min_role=Role.REVIEWER)
    return render(request, "annotation/review.html", _review_context(request, project))


@labeler_page
@require_safe
def review_panel(request, project_id: int):
    """One label of the queue alone: the first, or with ?after=ID the next one, ?before=ID the previous one."""
    project = access.access_project_by_id(request.user, project_id, min_role=Role.REVIEWER)
    cursor = {name: int(request.GET[name]) for name in ("after", "before") if request.GET.get(name, "").isdigit()}
    return render(request, "annotation/_review_panel.html", _review_context(request, project, **cursor))


@labeler_page
def correct_ranking_page(request, ranking_id: int):
    ranking = access.access_own_ranking(request.user, ranking_id)
    task = _task_for_page(ranking.task_id)
    entries = {e.candidate_id: e for e in ranking.entries.all()}
    for card in task.cards:
        card.entry = entries.get(card.pk)
    return render(request, "annotation/rank.html", {"project": task.project, "task": task, "kind": "ranking",
                                                    "correcting": ranking})


@labeler_page
def correct_demonstration_page(request, demonstration_id: int):
    demo = access.access_own_demonstration(request.user, demonstration_id)
    task = _task_for_page(demo.task_id)
    return render(request, "annotation/demonstrate.html", {"project": task.project, "task": task,
                                                           "kind": "demonstration", "correcting": demo})


@login_required
@require_POST
def markdown_preview(request):
    """Live preview for the demonstration editor, through the same sanitizer as everything else."""
    html = render_markdown(request.POST.get("text", "")[:100_000])
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    return response


# --- Admin pages: rounds, jobs, charts, lineage ---------------------------------------------------------


@labeler_page
def manage_project(request, project_id: int):
    """Rounds and jobs of a project with live progress, the start-round form, the model lineage, and the
    import upload (it posts to the API's import)."""
    project = access.access_project_by_id(request.user, project_id, min_role=Role.ADMIN)
    models = list(ModelVersion.objects.filter(project=project).select_related("parent", "round").order_by("id"))
    bases = ModelVersion.objects.registered_bases() | ModelVersion.objects.filter(project=project, stage="base")
    jobs = TrainingJob.objects.filter(project=project).select_related("round", "result_model").order_by("-id")[:50]
    return render(request, "annotation/manage_project.html", {
        "project": project, "rounds": project.rounds.order_by("-number"), "jobs": jobs, "models": models,
        "bases": bases.order_by("id"),
        "default_config": json.dumps(preset(project.round_preset), indent=2),
        "presets": {name: preset(name) for name in PRESETS},
        "paths": {name: " → ".join(stages) for name, stages in PATHS.items()},
        "import_formats": [(name, readers.HINTS.get(name, "")) for name in readers.FORMATS],
        "import_max_mb": settings.IMPORT_MAX_UPLOAD_MB,
    })


@labeler_page
def new_project(request):
    """The form for a new project with a base model and a prompt file (site admins); it posts to the API."""
    if not request.user.is_staff:
        raise PermissionDenied("Only site admins create projects.")
    return render(request, "annotation/new_project.html", {"bases": ModelVersion.objects.registered_bases(),
                                                           "formats": FORMATS})


@labeler_page
def manage_job(request, job_id: int):
    job = access.access_managed(request.user, access.jobs_visible_to(request.user), job_id, "job")
    job = TrainingJob.objects.select_related("project", "round", "result_model", "snapshot").get(pk=job.pk)
    path = job.round.path if job.round else ""
    return render(request, "annotation/manage_job.html", {"job": job, "project": job.project,
                                                          "inputs": job.input_models.all(),
                                                          "path": " → ".join(PATHS.get(path, ()))})


@labeler_page
@require_http_methods(["GET", "POST"])
def invitation_page(request, secret: str):
    """An invitation link: GET shows the project and the role; POST accepts or declines it."""
    try:
        invitation = memberships.pending(secret)
    except (NotFound, Conflict) as exc:
        return render(request, "annotation/invitation.html", {"error": str(exc.detail)}, status=exc.status_code)
    if request.method == "GET":
        return render(request, "annotation/invitation.html", {"invitation": invitation})
    try:
        if request.POST.get("answer") == "accept":
            memberships.accept(user=request.user, secret=secret)
            return redirect("labeling:home")
        memberships.decline(user=request.user, secret=secret)
    except Conflict as exc:
        return render(request, "annotation/invitation.html", {"error": str(exc.detail)}, status=409)
    return render(request, "annotation/invitation.html", {"declined": invitation})


@labeler_page
@require_safe
def project_dashboard(request, project_id: int):
    """A project's counts per round, agreement over rounds, labelers, distributions and position bias, from
    the current labels (reviewers and admins). It only reads; the charts get their numbers as JSON."""
    project = access.access_project_by_id(request.user, project_id, min_role=Role.REVIEWER)
    report = quality.project_quality(project)
    charts = {"alpha": report["agreement"]["by_round"], "k": report["distributions"]["k"],
              "lengths": report["distributions"]["response_length"], "bias": report["position_bias"]["by_k"]}
    return render(request, "annotation/dashboard.html", {"project": project, "report": report, "charts": charts})
