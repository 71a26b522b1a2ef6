from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from batchsite import health, metrics
from batchsite.errors import json_400, json_404, json_500
from jobs.schema import SchemaView
from labeling import accuracy_views

urlpatterns = [
    path("health", health.health, name="health"),
    path("ready", health.ready, name="ready"),
    path("metrics", metrics.metrics, name="metrics"),
    # The log viewer (/admin/worker-logs), inside the admin but not a model page.
    path("admin/", include("workers.console.log_views")),
    path("admin/", admin.site.urls),
    path("v1/", include("jobs.urls")),
    path("v1/", include("workers.urls")),
    path("v1/", include("labeling.api_urls")),
    # Label Studio's ML backend protocol; its "Model URL" is http://host:8000/labelstudio.
    path("labelstudio/", include("labeling.urls")),
    path(
        "v1/labeling/projects/<str:project_id>/accuracy",
        accuracy_views.AccuracyView.as_view(),
        name="labeling-accuracy",
    ),
    path(
        "v1/openapi.json",
        SchemaView.as_view(permission_classes=[AllowAny], authentication_classes=[]),
        name="openapi-schema",
    ),
    # The API reference (Swagger UI from drf-spectacular-sidecar's static files, no CDN).
    path(
        "docs/",
        SpectacularSwaggerView.as_view(
            url_name="openapi-schema", permission_classes=[AllowAny], authentication_classes=[]
        ),
        name="api-docs",
    ),
]

handler400 = json_400
handler404 = json_404
handler500 = json_500
