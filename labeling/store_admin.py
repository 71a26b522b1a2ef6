"""Admin of the Label Studio loop: webhook events (re-process), tasks,
annotations (ground truth, validity), pulled predictions and training runs, and
the project actions (sync, training export). Imported by labeling/admin.py."""

import json
from collections import defaultdict

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.html import format_html

from batchsite.errors import ApiError

from . import events, store, sync, training
from .models import Annotation, LabelingProject, LabelingTask, LabelStudioPrediction, TrainingRun, WebhookEvent

PREVIEW = 80


def _pre(value):
    return format_html("<pre style='white-space: pre-wrap'>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by Label Studio's events and sync only."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "action", "ls_project_id", "source", "status", "attempts", "short_error")
    list_filter = ("status", "source", "action")
    search_fields = ("action", "ls_project_id", "error")
    readonly_fields = (
        "action",
        "ls_project_id",
        "source",
        "status",
        "error",
        "attempts",
        "processed_at",
        "created_at",
        "updated_at",
        "payload",
    )
    exclude = ("body",)
    actions = ["process_again"]

    @admin.display(description="error or note")
    def short_error(self, obj):
        return obj.error[:PREVIEW]

    @admin.display(description="body as received")
    def payload(self, obj):
        raw = bytes(obj.body)
        try:
            return _pre(json.loads(raw))
        except ValueError:
            return raw.decode("utf-8", errors="replace")

    @admin.action(description="Process again")
    def process_again(self, request, queryset):
        if not self.has_view_permission(request):
            raise PermissionDenied
        counts = events.events_process_again(events=queryset.order_by("pk"))
        summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items(), key=str))
        level = messages.WARNING if counts.get(WebhookEvent.Status.FAILED) else messages.SUCCESS
        self.message_user(request, f"Processed again: {summary}.", level)


class AnnotationInline(admin.TabularInline):
    model = Annotation
    fields = readonly_fields = (
        "ls_annotation_id",
        "result",
        "ground_truth",
        "valid",
        "invalid_reason",
        "was_cancelled",
        "deleted_at",
    )
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True


@admin.register(LabelingTask)
class LabelingTaskAdmin(ReadOnlyAdmin):
    list_display = ("ls_task_id", "project", "text", "ls_updated_at", "deleted")
    list_filter = ("project", ("deleted_at", admin.EmptyFieldListFilter))
    list_select_related = ("project",)
    search_fields = ("=ls_task_id",)
    readonly_fields = ("project", "ls_task_id", "data", "meta", "ls_created_at", "ls_updated_at", "deleted_at")
    inlines = [AnnotationInline]

    @admin.display(description="data")
    def text(self, obj):
        return json.dumps(obj.data, ensure_ascii=False)[:PREVIEW]

    @admin.display(boolean=True)
    def deleted(self, obj):
        return obj.deleted_at is not None


def _by_project(queryset):
    grouped = defaultdict(list)
    for annotation in queryset.select_related("project"):
        grouped[annotation.project].append(annotation.ls_annotation_id)
    return grouped


@admin.register(Annotation)
class AnnotationAdmin(ReadOnlyAdmin):
    list_display = (
        "ls_annotation_id",
        "project",
        "task_link",
        "answer",
        "ground_truth",
        "ls_ground_truth",
        "valid",
        "was_cancelled",
        "deleted",
        "ls_updated_at",
    )
    list_filter = (
        "project",
        "ground_truth",
        "valid",
        "was_cancelled",
        ("deleted_at", admin.EmptyFieldListFilter),
    )
    list_select_related = ("project", "task")
    search_fields = ("=ls_annotation_id", "=task__ls_task_id", "invalid_reason")
    readonly_fields = (
        "project",
        "task",
        "ls_annotation_id",
        "pretty_result",
        "completed_by",
        "was_cancelled",
        "ls_ground_truth",
        "ground_truth",
        "ground_truth_at",
        "valid",
        "invalid_reason",
        "ls_created_at",
        "ls_updated_at",
        "deleted_at",
    )
    exclude = ("result",)
    actions = ["mark_ground_truth", "unmark_ground_truth"]

    @admin.display(description="task")
    def task_link(self, obj):
        url = reverse("admin:labeling_labelingtask_change", args=[obj.task_id])
        return format_html('<a href="{}">{}</a>', url, obj.task.ls_task_id)

    @admin.display(description="result")
    def answer(self, obj):
        return json.dumps([item.get("value") for item in obj.result if isinstance(item, dict)], ensure_ascii=False)[
            :PREVIEW
        ]

    @admin.display(description="result")
    def pretty_result(self, obj):
        return _pre(obj.result)

    @admin.display(boolean=True)
    def deleted(self, obj):
        return obj.deleted_at is not None

    def _set(self, request, queryset, value):
        if not self.has_view_permission(request):
            raise PermissionDenied
        changed = 0
        for project, ids in _by_project(queryset.filter(deleted_at=None)).items():
            try:
                annotations = store.ground_truth_set(project=project, value=value, annotation_ids=ids)
            except ApiError as exc:
                self.message_user(request, f"{project}: {exc.message}", messages.ERROR)
                continue
            changed += len(annotations)
        verb = "marked as" if value else "unmarked from"
        self.message_user(request, f"{changed} annotation(s) {verb} ground truth.", messages.SUCCESS)

    @admin.action(description="Mark as ground truth")
    def mark_ground_truth(self, request, queryset):
        self._set(request, queryset, True)

    @admin.action(description="Unmark ground truth")
    def unmark_ground_truth(self, request, queryset):
        self._set(request, queryset, False)


@admin.register(LabelStudioPrediction)
class LabelStudioPredictionAdmin(ReadOnlyAdmin):
    list_display = ("ls_prediction_id", "project", "task", "model_version", "score", "ls_updated_at")
    list_filter = ("project", "model_version")
    list_select_related = ("project", "task")
    readonly_fields = [f.name for f in LabelStudioPrediction._meta.fields]


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "project",
        "trigger",
        "status",
        "examples",
        "ground_truth_count",
        "skipped",
        "download",
        "error",
    )
    list_filter = ("status", "trigger", "project")
    list_select_related = ("project", "file")
    readonly_fields = (
        "project",
        "trigger",
        "status",
        "model_version",
        "ground_truth_revision",
        "examples",
        "ground_truth_count",
        "skipped",
        "download",
        "event",
        "error",
        "finished_at",
        "created_at",
    )
    exclude = ("file",)

    @admin.display(description="file")
    def download(self, obj):
        if obj.file_id is None:
            return "-"
        url = reverse("admin:jobs_file_download", args=[obj.file_id])
        return format_html('<a href="{}" download>{}</a>', url, obj.file.filename)


# Project actions (LabelingProjectAdmin in labeling/admin.py) ----------------------


@admin.action(description="Sync tasks and annotations from Label Studio")
def sync_action(modeladmin, request, queryset):
    for project in queryset:
        try:
            synced = sync.sync_project(project=project)
        except sync.SyncError as exc:
            modeladmin.message_user(request, str(exc), messages.ERROR)
            continue
        modeladmin.message_user(request, str(synced), messages.SUCCESS)


@admin.action(description="Export training data (fine-tuning file)")
def training_action(modeladmin, request, queryset):
    for project in queryset:
        run = training.run_start(project=project, trigger=TrainingRun.Trigger.MANUAL, owner=request.user)
        url = reverse("admin:labeling_trainingrun_change", args=[run.pk])
        modeladmin.message_user(
            request,
            format_html(
                '{}: <a href="{}">training run {}</a> started; the file is written in the background.',
                project,
                url,
                run.pk,
            ),
            messages.SUCCESS,
        )


def sync_view(modeladmin, request, object_id):
    """The project page's "Sync now" button (a POST)."""
    if request.method != "POST" or not modeladmin.has_change_permission(request):
        raise PermissionDenied
    project = get_object_or_404(LabelingProject, pk=object_id)
    sync_action(modeladmin, request, LabelingProject.objects.filter(pk=project.pk))
    return redirect("admin:labeling_labelingproject_change", project.pk)


def loop_summary(obj):
    """The project's annotation store in numbers, with links, and the sync button."""
    if obj.pk is None:
        return "-"
    live = obj.annotations.filter(deleted_at=None)

    def link(model, label, count, **filters):
        query = "&".join(f"{k}={v}" for k, v in {"project__id__exact": obj.pk, **filters}.items())
        return format_html(
            '<a href="{}?{}">{} {}</a>', reverse(f"admin:labeling_{model}_changelist"), query, count, label
        )

    live_filter = {"deleted_at__isempty": 1}
    parts = [
        link("labelingtask", "tasks", obj.tasks.filter(deleted_at=None).count(), **live_filter),
        link("annotation", "annotations", live.count(), **live_filter),
        link(
            "annotation", "ground truth", live.filter(ground_truth=True).count(), ground_truth__exact=1, **live_filter
        ),
        link("annotation", "invalid", live.filter(valid=False).count(), valid__exact=0, **live_filter),
        link("annotation", "cancelled", live.filter(was_cancelled=True).count(), was_cancelled__exact=1, **live_filter),
        link("trainingrun", "training runs", obj.training_runs.count()),
    ]
    sync_url = reverse("admin:labeling_labelingproject_sync", args=[obj.pk])
    button = format_html(
        '<button type="submit" class="button" formaction="{}" formmethod="post" id="sync-button">Sync now</button>',
        sync_url,
    )
    return format_html("{} &nbsp; {}", format_html(" · ".join(["{}"] * len(parts)), *parts), button)
