"""The only way to fetch an object on behalf of a user (after Zulip's ``access_*_by_id``).

Rules, written once:
- site staff see and manage everything;
- a project's admins and reviewers see all of its data; admins also change it;
- a labeler sees the projects they belong to and only their own submissions;
- anyone else gets a 404, so the existence of other projects' objects never leaks.
"""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.http import Http404

from .models import (
    Candidate,
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
    TaskSlot,
    TrainingJob,
)
from .prepared import PreparedQuery

ROLE_ORDER = {Role.LABELER: 0, Role.REVIEWER: 1, Role.ADMIN: 2}
STAFF_ROLE = Role.ADMIN


def _check_role(role: str | None, min_role: str) -> None:
    if role is None:
        raise Http404("No such project.")
    if ROLE_ORDER[role] < ROLE_ORDER[min_role]:
        raise PermissionDenied(f"This needs the {min_role} role in the project.")


def _with_role(queryset: QuerySet, user, project_field: str) -> QuerySet:
    """Annotate each row with the user's role in its project, in the same query."""
    role = Membership.objects.filter(user=user, project=OuterRef(project_field)).values("role")[:1]
    return queryset.annotate(user_role=Subquery(role))


def projects_with_role(user) -> QuerySet:
    """The projects the user may see, each annotated with the user's membership ``user_role`` (None for
    site staff outside the project), in the same query."""
    return _with_role(projects_visible_to(user), user, "pk")


# Every labeling request runs one of these two: built and compiled once (annotation/prepared.py).
_PROJECT_WITH_ROLE = PreparedQuery(
    lambda user, project: _with_role(Project.objects.all(), user, "pk").filter(pk=project), "user", "project")
_TASK_WITH_ROLE = PreparedQuery(
    lambda user, task: _with_role(Task.objects.select_related("project", "prompt"), user, "project_id").filter(pk=task),
    "user", "task")


def access_project_by_id(user, project_id: int, *, min_role: str = Role.LABELER) -> Project:
    project = _PROJECT_WITH_ROLE.get(user=user.pk, project=project_id)
    if project is None:
        raise Http404("No such project.")
    role = STAFF_ROLE if user.is_staff else project.user_role
    _check_role(role, min_role)
    project.user_role = role
    return project


def access_task_by_id(user, task_id: int, *, min_role: str = Role.LABELER) -> Task:
    """A task of a project the user belongs to, with its project and the user's role loaded."""
    task = _TASK_WITH_ROLE.get(user=user.pk, task=task_id)
    if task is None:
        raise Http404("No such task.")
    role = STAFF_ROLE if user.is_staff else task.user_role
    _check_role(role, min_role)
    task.user_role = role
    return task


def _access_own(queryset: QuerySet, user, pk: int, owner_field: str, what: str):
    obj = queryset.filter(pk=pk).first()
    if obj is None:
        raise Http404(f"No such {what}.")
    if getattr(obj, f"{owner_field}_id") != user.pk:
        raise PermissionDenied(f"Only its author may change this {what}.")
    return obj


def access_prompt_by_id(user, prompt_id: int, *, for_change: bool = False) -> Prompt:
    """A prompt the user may read (reviewers and admins of its project, or its labeler author); with
    ``for_change``, one they may change (project admins): others who can read it get 403."""
    prompt = prompts_visible_to(user).filter(pk=prompt_id).first()
    if prompt is None:
        raise Http404("No such prompt.")
    if for_change and not prompts_editable_by(user).filter(pk=prompt_id).exists():
        raise PermissionDenied("Only project admins change prompts.")
    return prompt


def access_candidate_by_id(user, candidate_id: int, *, min_role: str = Role.REVIEWER) -> Candidate:
    """A candidate of a project where the user holds ``min_role``, with its prompt and model loaded."""
    candidate = Candidate.objects.select_related("prompt", "model_version").filter(pk=candidate_id).first()
    if candidate is None:
        raise Http404("No such candidate.")
    access_project_by_id(user, candidate.prompt.project_id, min_role=min_role)
    return candidate


def access_own_ranking(user, ranking_id: int) -> Ranking:
    """A ranking the user submitted (others' visible rankings give 403, invisible ones 404)."""
    queryset = rankings_visible_to(user).select_related("task__round", "task__project")
    return _access_own(queryset, user, ranking_id, "labeler", "ranking")


def access_own_demonstration(user, demonstration_id: int) -> Demonstration:
    queryset = demonstrations_visible_to(user).select_related("task__round", "task__project")
    return _access_own(queryset, user, demonstration_id, "author", "demonstration")


def _access_for_review(queryset: QuerySet, user, pk: int, what: str):
    label = queryset.select_related("task__project", "task__round").filter(pk=pk).first()
    if label is None:
        raise Http404(f"No such {what}.")
    if not holds_role(user, label.task.project_id, min_role=Role.REVIEWER):
        raise PermissionDenied("Reviews belong to the project's reviewers and admins.")
    return label


def access_ranking_for_review(user, ranking_id: int) -> Ranking:
    """A ranking the user may review: they are a reviewer or admin of its project, or site staff. Its labeler,
    who sees it, gets 403; anyone else 404. (Whether they wrote it is the review service's rule.)"""
    return _access_for_review(rankings_visible_to(user), user, ranking_id, "ranking")


def access_demonstration_for_review(user, demonstration_id: int) -> Demonstration:
    """A demonstration the user may review or edit, as ``access_ranking_for_review``."""
    return _access_for_review(demonstrations_visible_to(user), user, demonstration_id, "demonstration")


def holds_role(user, project_id: int, *, min_role: str) -> bool:
    """Whether the user holds at least ``min_role`` in the project (site staff hold every role)."""
    return user.is_staff or projects_where(user, min_role=min_role).filter(project_id=project_id).exists()


def projects_where(user, *, min_role: str) -> QuerySet:
    """Ids of the projects where the user holds at least ``min_role``."""
    roles = [role for role, order in ROLE_ORDER.items() if order >= ROLE_ORDER[min_role]]
    return Membership.objects.filter(user=user, role__in=roles).values("project_id")


def projects_visible_to(user) -> QuerySet:
    if user.is_staff:
        return Project.objects.all()
    return Project.objects.filter(pk__in=projects_where(user, min_role=Role.LABELER))


def tasks_visible_to(user) -> QuerySet:
    """Reviewers and admins see their projects' tasks; labelers see the tasks they hold or did."""
    if user.is_staff:
        return Task.objects.all()
    return Task.objects.filter(
        Q(project__in=projects_where(user, min_role=Role.REVIEWER))
        | Q(pk__in=TaskSlot.objects.filter(labeler=user).values("task_id"))
    )


def _submissions_visible_to(user, queryset: QuerySet, owner_field: str) -> QuerySet:
    if user.is_staff:
        return queryset
    return queryset.filter(
        Q(**{"task__project__in": projects_where(user, min_role=Role.REVIEWER)}) | Q(**{owner_field: user})
    )


def rankings_visible_to(user) -> QuerySet:
    return _submissions_visible_to(user, Ranking.objects.all(), "labeler")


def demonstrations_visible_to(user) -> QuerySet:
    return _submissions_visible_to(user, Demonstration.objects.all(), "author")


def prompts_visible_to(user) -> QuerySet:
    """Reviewers and admins see their projects' prompts; labelers see the prompts they wrote."""
    if user.is_staff:
        return Prompt.objects.all()
    return Prompt.objects.filter(
        Q(project__in=projects_where(user, min_role=Role.REVIEWER))
        | Q(author=user, project__in=projects_where(user, min_role=Role.LABELER))
    )


def _in_projects_where(user, model, min_role: str) -> QuerySet:
    """Rows of ``model`` (which has a ``project``) in the projects where the user holds ``min_role``."""
    if user.is_staff:
        return model.objects.all()
    return model.objects.filter(project__in=projects_where(user, min_role=min_role))


def prompts_editable_by(user) -> QuerySet:
    return _in_projects_where(user, Prompt, Role.ADMIN)


def rounds_visible_to(user) -> QuerySet:
    return _in_projects_where(user, Round, Role.REVIEWER)


def jobs_visible_to(user) -> QuerySet:
    return _in_projects_where(user, TrainingJob, Role.REVIEWER)


def snapshots_visible_to(user) -> QuerySet:
    return _in_projects_where(user, DatasetSnapshot, Role.REVIEWER)


def access_managed(user, queryset: QuerySet, pk: int, what: str):
    """An object of a project the user administers (reviewers see it but get 403; others 404)."""
    obj = queryset.filter(pk=pk).select_related("project").first()
    if obj is None:
        raise Http404(f"No such {what}.")
    if not user.is_staff and not Membership.objects.filter(user=user, project=obj.project, role=Role.ADMIN).exists():
        raise PermissionDenied("This needs the admin role in the project.")
    return obj


def model_versions_visible_to(user) -> QuerySet:
    """Reviewers and admins see their projects' models; every signed-in user sees the registered bases."""
    return _in_projects_where(user, ModelVersion, Role.REVIEWER) | ModelVersion.objects.registered_bases()
