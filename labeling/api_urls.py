"""The Label Studio loop's routes under /v1 (the ML backend's are in labeling/urls.py)."""

from django.urls import path

from . import api

urlpatterns = [
    path("webhooks/label-studio", api.LabelStudioWebhookView.as_view(), name="labelstudio-webhook"),
    path(
        "labeling/projects/<int:project_id>/ground-truth",
        api.GroundTruthView.as_view(),
        name="labeling-ground-truth",
    ),
]
