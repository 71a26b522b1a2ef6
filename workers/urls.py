from django.urls import path

from . import api, realtime_api

urlpatterns = [
    path("models", api.ModelsView.as_view(), name="models"),
    path("models/<path:model_id>", api.ModelDetailView.as_view(), name="model-detail"),
    path("chat/completions", realtime_api.ChatCompletionsView.as_view(), name="chat-completions"),
    path("completions", realtime_api.CompletionsView.as_view(), name="completions"),
    path("embeddings", realtime_api.EmbeddingsView.as_view(), name="embeddings"),
    path("inference", realtime_api.InferenceView.as_view(), name="inference"),
]
