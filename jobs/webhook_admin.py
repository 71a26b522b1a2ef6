"""Admin pages of the completion webhooks: each key's endpoint (the secret shown
once, when made) and the deliveries, with a re-send action for dead letters."""

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse

from . import webhooks
from .models import WebhookDelivery, WebhookEndpoint


class WebhookEndpointForm(forms.ModelForm):
    class Meta:
        model = WebhookEndpoint
        fields = ["api_key", "url"]

    def clean_url(self):
        url = self.cleaned_data["url"].strip()
        if url:
            try:
                webhooks.check_url(url)
            except webhooks.UnsafeUrl as exc:
                raise forms.ValidationError(str(exc)) from None
        return url


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["api_key", "url", "created_at"]
    search_fields = ["api_key__name", "url"]
    fields = ["api_key", "url"]
    form = WebhookEndpointForm

    def get_readonly_fields(self, request, obj=None):
        return ["api_key"] if obj else []

    def save_model(self, request, obj, form, change):
        if change:
            obj.save()
            return
        endpoint = webhooks.endpoint_create(api_key=obj.api_key, url=obj.url)
        obj.pk = endpoint.pk
        request.new_webhook = endpoint

    def response_add(self, request, obj, post_url_continue=None):
        # The secret goes on the answer to the POST itself, never into a message (a cookie or the session).
        endpoint = getattr(request, "new_webhook", None)
        if endpoint is None:
            return super().response_add(request, obj, post_url_continue)
        context = {**self.admin_site.each_context(request), "title": "New webhook", "endpoint": endpoint}
        response = TemplateResponse(request, "admin/jobs/webhook_created.html", context)
        response["Cache-Control"] = "no-store"
        return response


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
