from django.urls import path

from . import api

urlpatterns = [
    path("files", api.FilesView.as_view(), name="files"),
    path("files/<str:file_id>", api.FileDetailView.as_view(), name="file-detail"),
    path("files/<str:file_id>/content", api.FileContentView.as_view(), name="file-content"),
    path("batches", api.BatchesView.as_view(), name="batches"),
    path("batches/<str:batch_id>", api.BatchDetailView.as_view(), name="batch-detail"),
    path("batches/<str:batch_id>/cancel", api.BatchCancelView.as_view(), name="batch-cancel"),
    path("stats", api.StatsView.as_view(), name="stats"),
]
