from datetime import UTC, datetime

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from batchsite.errors import ApiError

from . import selectors, services
from .models import ApiKey, Batch, BatchRange, File


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_select_related = ["owner"]
    readonly_fields = ["prefix", "last_used_at", "created_at"]
    fields = ["name", "owner", "prefix", "revoked_at", "last_used_at", "created_at"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        api_key, raw_key = services.api_key_create(owner=obj.owner, name=obj.name)
        obj.pk = api_key.pk
        obj.prefix = api_key.prefix
        request.new_raw_api_key = raw_key

    def response_add(self, request, obj, post_url_continue=None):
        # Shown on the answer to the POST itself: a message would carry the key in
        # the messages cookie (or the session) until the next page reads it.
        raw_key = getattr(request, "new_raw_api_key", None)
        if raw_key is None:
            return super().response_add(request, obj, post_url_continue)
        context = {**self.admin_site.each_context(request), "title": "New API key", "api_key": obj, "raw_key": raw_key}
        response = TemplateResponse(request, "admin/jobs/apikey_created.html", context)
        response["Cache-Control"] = "no-store"
        return response


def download_links(*labelled_ids):
    """Links to the admin's download view for the (label, file id) pairs that have an id."""
    links = [(reverse("admin:jobs_file_download", args=[file_id]), label) for label, file_id in labelled_ids if file_id]
    return format_html_join(" · ", '<a href="{}" download>{}</a>', links) or "-"


@admin.register(File)
class FileAdmin(admin.ModelAdmin):
    list_display = ["id", "filename", "purpose", "bytes", "line_count", "owner", "created_at", "download"]
    list_filter = ["purpose"]
    list_select_related = ["owner"]
    search_fields = ["id", "filename"]
    readonly_fields = [
        "id",
        "owner",
        "purpose",
        "filename",
        "bytes",
        "line_count",
        "storage_name",
        "created_at",
        "download",
    ]

    def has_add_permission(self, request):
        return False

    def get_deleted_objects(self, objs, request):
        """The input of an unfinished batch is shown as protected: the admin's delete
        page and bulk action then refuse it with the reason, as the API does (409)."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        ids = [file.pk for file in objs]
        running = Batch.objects.filter(input_file_id__in=ids, status__in=Batch.ACTIVE).order_by("created_at")
        for batch in running:
            protected.append(
                f"File {batch.input_file_id} is the input of batch {batch.pk} ({batch.status}); cancel the batch first."
            )
        return deleted, counts, perms_needed, protected

    def delete_model(self, request, obj):
        # Through the service: the in-use check under the lock batch_create takes, and the content deleted too.
        try:
            services.file_delete(file=obj)
        except ApiError as exc:
            self.message_user(request, f"{obj.pk}: {exc.message}", messages.ERROR)

    def delete_queryset(self, request, queryset):
        for file in queryset:
            self.delete_model(request, file)

    def get_urls(self):
        download = path(
            "<path:file_id>/download/", self.admin_site.admin_view(self.download_view), name="jobs_file_download"
        )
        return [download, *super().get_urls()]

    def download_view(self, request, file_id):
        if not self.has_view_permission(request):
            raise PermissionDenied
        file = get_object_or_404(File, pk=file_id)
        try:
            stream = services.file_open(file)
        except FileNotFoundError:
            raise Http404(f"The content of {file_id} is gone.") from None
        return FileResponse(stream, as_attachment=True, filename=file.filename, content_type="application/octet-stream")

    @admin.display(description="download")
    def download(self, file):
        return download_links(("download", file.pk))


def duration_text(seconds):
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def throughput_chart(hourly, width=720, height=160):
    """Output tokens per hour as SVG bars (drawn by the template, no script)."""
    top = max((hour["output_tokens"] for hour in hourly), default=0) or 1
    step = width / max(len(hourly), 1)
    bars = []
    for i, hour in enumerate(hourly):
        bar_height = round(hour["output_tokens"] / top * (height - 20), 1)
        start = datetime.fromtimestamp(hour["start"], tz=UTC)
        bars.append(
            {
                "x": round(i * step + 2, 1),
                "y": round(height - bar_height, 1),
                "width": round(step - 4, 1),
                "height": bar_height,
                "tokens": hour["output_tokens"],
                "requests": hour["requests_completed"],
                "hour": start.strftime("%H:00"),
                "label": start.strftime("%H:00") if i % 6 == 0 else "",
                "label_x": round(i * step + step / 2, 1),
            }
        )
    return {"width": width, "height": height, "bars": bars, "top": top}


def _clock(unix_seconds):
    return timezone.localtime(datetime.fromtimestamp(unix_seconds, tz=UTC)).strftime("%m-%d %H:%M")


class BatchRangeInline(admin.TabularInline):
    """The ranges of a batch split across workers (jobs.ranges): who holds or ran each."""

    model = BatchRange
    extra = 0
    can_delete = False
    fields = ["first_line", "end_line", "requests", "claimed_by", "heartbeat_at", "done_at", "done_by"]
    readonly_fields = fields
    ordering = ["first_line"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    inlines = [BatchRangeInline]
    # Newest first, narrow enough for a 1400-pixel window: the files are on the batch's page.
    list_display = ["id", "status", "created_at", "owner", "model", "queue", "duration", "progress_bar"]
    list_filter = ["status", "priority", "endpoint", "created_at", "model", "owner"]
    ordering = ["-created_at", "-pk"]
    date_hierarchy = "created_at"
    list_select_related = ["owner"]
    search_fields = ["id", "model"]
    actions = ["cancel_batches"]
    readonly_fields = [f.name for f in Batch._meta.fields]
    readonly_fields.insert(readonly_fields.index("error_file") + 1, "files")
    readonly_fields.insert(readonly_fields.index("priority") + 1, "queue")

    def has_add_permission(self, request):
        return False

    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        # One queue plan for the page, not one per row.
        selectors.batch_estimates_attach(changelist.result_list)
        return changelist

    @admin.display(description="queue")
    def queue(self, batch):
        """Its priority when not normal, its place among the waiting batches and the
        estimated start and finish (as on the API)."""
        estimate = getattr(batch, "queue_estimate", None)
        if estimate is None:
            (batch,) = selectors.batch_estimates_attach([batch])
            estimate = getattr(batch, "queue_estimate", None) or {}
        position, start, finish = (
            estimate.get("queue_position"),
            estimate.get("estimated_start_at"),
            estimate.get("estimated_finish_at"),
        )
        parts = [f"#{position}"] if position else []
        if batch.priority:
            parts.append(f"priority {batch.priority:+d}")
        if start:
            parts.append(f"start ~{_clock(start)}")
        if finish:
            parts.append(f"finish ~{_clock(finish)}")
        return ", ".join(parts) or "-"

    @admin.display(description="progress")
    def progress_bar(self, batch):
        percent = int(batch.progress * 100)
        return format_html(
            '<progress max="100" value="{}"></progress> {}/{} ({} failed)',
            percent,
            batch.done_requests,
            batch.total_requests,
            batch.failed_requests,
        )

    @admin.display(description="duration")
    def duration(self, batch):
        """In progress until finished (or until now, while it runs)."""
        if batch.in_progress_at is None:
            return "-"
        end = (
            batch.completed_at or batch.failed_at or batch.cancelled_at or batch.expired_at
            if batch.is_finished
            else timezone.now()
        )
        return duration_text(((end or batch.updated_at) - batch.in_progress_at).total_seconds())

    def get_urls(self):
        dashboard = path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="jobs_batch_dashboard")
        return [dashboard, *super().get_urls()]

    def dashboard_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        stats = selectors.batch_stats(owner=None)
        context = {
            **self.admin_site.each_context(request),
            "title": "Batch dashboard",
            "stats": stats,
            "statuses": [(status, n) for status, n in stats["by_status"].items() if n],
            "chart": throughput_chart(stats["hourly"]),
            "average_duration": duration_text(stats["average_duration_seconds"]),
        }
        return TemplateResponse(request, "admin/jobs/dashboard.html", context)

    @admin.display(description="files")
    def files(self, batch):
        return download_links(
            ("input", batch.input_file_id), ("output", batch.output_file_id), ("errors", batch.error_file_id)
        )

    @admin.action(description="Cancel selected batches", permissions=["change"])
    def cancel_batches(self, request, queryset):
        for batch in queryset:
            try:
                services.batch_cancel(batch=batch)
            except ApiError as exc:
                self.message_user(request, f"{batch.pk}: {exc.message}", messages.WARNING)
            else:
                self.message_user(request, f"{batch.pk}: cancel requested")
