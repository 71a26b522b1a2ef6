from django.urls import path

from . import api
from .realtime import views as realtime

urlpatterns = [
    path("models", api.ModelsView.as_view(), name="models"),
    path("models/<path:model_id>", api.ModelDetailView.as_view(), name="model-detail"),
    path("queue", api.QueueView.as_view(), name="queue"),
    path("chat/completions", realtime.ChatCompletionsView.as_view(), name="chat-completions"),
    path("completions", realtime.CompletionsView.as_view(), name="completions"),
    path("embeddings", realtime.EmbeddingsView.as_view(), name="embeddings"),
    path("inference", realtime.InferenceView.as_view(), name="inference"),
]
