from django.urls import path

from . import api

urlpatterns = [
    path("models", api.ModelsView.as_view(), name="models"),
    path("models/<path:model_id>", api.ModelDetailView.as_view(), name="model-detail"),
]
