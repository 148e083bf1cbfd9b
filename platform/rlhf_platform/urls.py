from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from annotation.api.views import health
from annotation.health import readiness

handler404 = "annotation.api.errors.not_found"  # JSON under /api/

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health, name="health"),
    path("readyz", readiness, name="ready"),
    path("api/", include("annotation.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema", template_name="annotation/api_docs.html"),
         name="api-docs"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("annotation.urls")),
]
