from django.contrib import admin, messages
from django.utils.html import format_html

from . import services
from .errors import ApiError
from .models import ApiKey, Batch, File


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
        messages.warning(request, f"The new key is {raw_key} - copy it now, it is not shown again.")


@admin.register(File)
class FileAdmin(admin.ModelAdmin):
    list_display = ["id", "filename", "purpose", "bytes", "line_count", "owner", "created_at"]
    list_filter = ["purpose"]
    list_select_related = ["owner"]
    search_fields = ["id", "filename"]
    readonly_fields = ["id", "owner", "purpose", "filename", "bytes", "line_count", "storage_name", "created_at"]

    def has_add_permission(self, request):
        return False


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ["id", "status", "endpoint", "model", "progress_bar", "owner", "created_at"]
    list_filter = ["status", "endpoint"]
    list_select_related = ["owner"]
    search_fields = ["id", "model"]
    actions = ["cancel_batches"]
    readonly_fields = [f.name for f in Batch._meta.fields]

    def has_add_permission(self, request):
        return False

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

    @admin.action(description="Cancel selected batches")
    def cancel_batches(self, request, queryset):
        for batch in queryset:
            try:
                services.batch_cancel(batch=batch)
            except ApiError as exc:
                self.message_user(request, f"{batch.pk}: {exc.message}", messages.WARNING)
            else:
                self.message_user(request, f"{batch.pk}: cancel requested")
