"""Admin pages of the completion webhooks: each key's endpoint (the secret shown
once, when made) and the deliveries, with a re-send action for dead letters."""

from django.contrib import admin, messages
from django.utils.html import format_html

from . import webhooks
from .models import WebhookDelivery, WebhookEndpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["api_key", "url", "created_at"]
    search_fields = ["api_key__name", "url"]
    fields = ["api_key", "url"]

    def get_readonly_fields(self, request, obj=None):
        return ["api_key"] if obj else []

    def save_model(self, request, obj, form, change):
        try:
            webhooks.check_url(obj.url) if obj.url else None
        except webhooks.UnsafeUrl as exc:
            self.message_user(request, f"Not saved: {exc}", messages.ERROR)
            return
        if change:
            obj.save()
            return
        endpoint = webhooks.endpoint_create(api_key=obj.api_key, url=obj.url)
        obj.pk = endpoint.pk
        self.message_user(
            request,
            format_html(
                "Webhook secret for {} (shown once, store it now): <code>{}</code>", obj.api_key, endpoint.secret
            ),
            messages.WARNING,
        )


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "event_type",
        "batch_id",
        "url",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
    ]
    list_filter = ["status", "event_type"]
    search_fields = ["batch_id", "url", "id"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    actions = ["resend"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_resend_permission(self, request):
        return request.user.has_perm("jobs.change_webhookdelivery")

    @admin.action(description="Re-send the stored payload", permissions=["resend"])
    def resend(self, request, queryset):
        count = 0
        for delivery in queryset.exclude(status=WebhookDelivery.Status.PENDING):
            webhooks.resend(delivery)
            count += 1
        self.message_user(request, f"Queued {count} delivery(ies) again.", messages.SUCCESS)
