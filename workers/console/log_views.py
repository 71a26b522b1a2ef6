"""The admin's log viewer: the end of worker.log or web.log, searchable and refreshed
while the operator watches. Staff only; log text reaches the page as JSON data and is
never rendered as HTML. Staff need the workers.view_logs permission too: the logs hold
prompts and error details of every user."""

import os
from functools import wraps

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.http import content_disposition_header

from . import logs

TAIL_CHOICES = (100, 500, 1000, 5000)
DEFAULT_TAIL = 500
MAX_TAIL = 10_000


def _error(message, param, status=400):
    return JsonResponse({"error": {"message": message, "param": param}}, status=status)


def _requested_log(request):
    """The allowed log name the request asks for, or None: a request never names a path."""
    name = request.GET.get("log", "worker")
    return name if name in logs.LOG_NAMES else None


def viewer(request):
    context = {
        **admin.site.each_context(request),
        "title": "Logs",
        "log_names": logs.LOG_NAMES,
        "tail_choices": TAIL_CHOICES,
        "default_tail": DEFAULT_TAIL,
    }
    return TemplateResponse(request, "admin/worker_logs.html", context)


def content(request):
    name = _requested_log(request)
    if name is None:
        return _error(f"log must be one of: {', '.join(logs.LOG_NAMES)}.", "log")
    try:
        lines = int(request.GET.get("tail", DEFAULT_TAIL))
    except ValueError:
        lines = 0
    if not 1 <= lines <= MAX_TAIL:
        return _error(f"tail must be a whole number from 1 to {MAX_TAIL}.", "tail")
    log_file = logs.log_path(name)
    found = logs.tail(log_file, lines)
    try:
        size = log_file.stat().st_size
    except FileNotFoundError:
        size = 0
    return JsonResponse(
        {"lines": found, "levels": logs.levels(found), **logs.counts(found), "file": log_file.name, "size": size}
    )


def _read(f, size, block=64 * 1024):
    with f:
        while size > 0:
            chunk = f.read(min(block, size))
            if not chunk:
                return
            size -= len(chunk)
            yield chunk


def download(request):
    name = _requested_log(request)
    if name is None:
        return _error(f"log must be one of: {', '.join(logs.LOG_NAMES)}.", "log")
    log_file = logs.log_path(name)
    try:
        f = open(log_file, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return _error(f"{log_file.name} has not been written yet.", "log", status=404)
    # The file grows while it streams: send the size it had when opened, which the
    # Content-Length promises. A rollover meanwhile is harmless, the open file is kept.
    size = os.fstat(f.fileno()).st_size
    response = StreamingHttpResponse(_read(f, size), content_type="text/plain; charset=utf-8")
    response["Content-Length"] = str(size)
    response["Content-Disposition"] = content_disposition_header(True, log_file.name)
    return response


VIEW_LOGS = "workers.view_logs"


def logs_view(view):
    """admin_view (anyone who is not active staff goes to the admin login), then 403
    for staff without the permission."""

    @wraps(view)
    def checked(request, *args, **kwargs):
        if not request.user.has_perm(VIEW_LOGS):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return admin.site.admin_view(checked)


# Included under "admin/" before the admin's own URLs.
urlpatterns = [
    path("worker-logs", logs_view(viewer), name="worker-logs"),
    path("worker-logs/content", logs_view(content), name="worker-logs-content"),
    path("worker-logs/download", logs_view(download), name="worker-logs-download"),
]
