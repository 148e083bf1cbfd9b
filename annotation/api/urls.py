from __future__ import annotations

from django.urls import include, path, re_path
from rest_framework.routers import DefaultRouter

from . import auth_views, views


class IntegerIdRouter(DefaultRouter):
    """Every object id in a path is an integer: anything else is no route (404), never a lookup that
    raises ValueError (500), and the published schema says so. No format-suffix routes (``/members.json``):
    the API speaks JSON only, the schema never listed them, and an action called through one got an
    unexpected ``format`` argument (500)."""

    include_format_suffixes = False

    def get_lookup_regex(self, viewset, lookup_prefix=""):
        kwarg = getattr(viewset, "lookup_url_kwarg", None) or getattr(viewset, "lookup_field", "pk")
        return f"(?P<{lookup_prefix}{kwarg}>{getattr(viewset, 'lookup_value_regex', '[0-9]+')})"


router = IntegerIdRouter()
router.register("projects", views.ProjectViewSet, basename="project")
router.register("prompts", views.PromptViewSet, basename="prompt")
router.register("tasks", views.TaskViewSet, basename="task")
router.register("rankings", views.RankingViewSet, basename="ranking")
router.register("demonstrations", views.DemonstrationViewSet, basename="demonstration")
router.register("rounds", views.RoundViewSet, basename="round")
router.register("model-versions", views.ModelVersionViewSet, basename="modelversion")
router.register("base-models", views.BaseModelViewSet, basename="basemodel")
router.register("jobs", views.TrainingJobViewSet, basename="job")
router.register("snapshots", views.SnapshotViewSet, basename="snapshot")

urlpatterns = [
    path("auth/token/", auth_views.TokenLoginView.as_view(), name="api-token"),
    path("auth/tokens/", auth_views.TokenListView.as_view(), name="api-tokens"),
    re_path(r"^auth/tokens/(?P<token_key>[0-9a-f]{15})/$", auth_views.TokenRevokeView.as_view(),
            name="api-token-revoke"),  # knox's token_key: the token's first 15 hex digits
    path("auth/logout/", auth_views.TokenLogoutView.as_view(), name="api-logout"),
    path("invitations/accept/", views.InvitationAnswerView.as_view(answer="accept"), name="invitation-accept"),
    path("invitations/decline/", views.InvitationAnswerView.as_view(answer="decline"), name="invitation-decline"),
    path("me/stats/", views.MyStatsView.as_view(), name="my-stats"),
    path("candidates/<int:pk>/lineage/", views.CandidateLineageView.as_view(), name="candidate-lineage"),
    path("", include(router.urls)),
]
