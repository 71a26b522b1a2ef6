"""The operations console in Django admin: models, workers (heartbeat card, Restart, Clear GPU, Kill), commands."""

import time

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.template.defaultfilters import filesizeformat
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import capfirst

from .. import selectors, services
from ..models import RegisteredModel, Supervisor, Worker, WorkerCommand
from .engine_args import refused_engine_args

FRESHNESS_COLOURS = {
    Worker.Freshness.ONLINE: "#2e7d32",
    Worker.Freshness.STALE: "#b26a00",
    Worker.Freshness.OFFLINE: "#c62828",
}


def freshness_badge(freshness):
    return format_html(
        '<span class="freshness-badge" data-freshness="{}" style="color:#fff;background:{};'
        'padding:1px 6px;border-radius:8px;font-size:11px">{}</span>',
        freshness,
        FRESHNESS_COLOURS[freshness],
        freshness,
    )


def command_wait_seconds():
    """How long an action waits for the worker's answer: two heartbeats, since the
    worker only looks for commands once per heartbeat."""
    return 2 * settings.VLLM_BATCH["HEARTBEAT_SECONDS"]


class RegisteredModelForm(forms.ModelForm):
    class Meta:
        model = RegisteredModel
        fields = [
            "name",
            "path",
            "runner",
            "is_active",
            "max_model_len",
            "dtype",
            "gpu_memory_utilization",
            "tensor_parallel_size",
            "extra_engine_args",
        ]

    def clean_extra_engine_args(self):
        extra = self.cleaned_data["extra_engine_args"]
        problem = refused_engine_args(extra)
        if problem:
            raise forms.ValidationError(problem)
        return extra


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    form = RegisteredModelForm
    list_display = ["name", "runner", "path", "max_model_len", "dtype", "gpu_memory_utilization", "is_active"]
    list_filter = ["runner", "is_active", "dtype"]
    search_fields = ["name", "path"]
    readonly_fields = ["created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "path", "runner", "is_active"]}),
        (
            "Engine",
            {
                "fields": [
                    "max_model_len",
                    "dtype",
                    "gpu_memory_utilization",
                    "tensor_parallel_size",
                    "extra_engine_args",
                ],
                "description": "Used the next time a worker loads the model.",
            },
        ),
        (None, {"fields": ["created_at", "updated_at"]}),
    ]


class FreshnessFilter(admin.SimpleListFilter):
    title = "freshness"
    parameter_name = "freshness"

    def lookups(self, request, model_admin):
        return Worker.Freshness.choices

    def queryset(self, request, queryset):
        if self.value() in Worker.Freshness.values:
            return selectors.worker_filter_freshness(queryset=queryset, freshness=self.value())
        return queryset


class ShowFilter(admin.SimpleListFilter):
    """Live workers by default; stopped and lost ones (with when and why) behind the filter."""

    title = "show"
    parameter_name = "show"

    def lookups(self, request, model_admin):
        return [("gone", "stopped or lost"), ("all", "all")]

    def choices(self, changelist):
        for lookup, title in [(None, "live"), *self.lookup_choices]:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}, [])
                if lookup
                else changelist.get_query_string(remove=[self.parameter_name]),
                "display": title,
            }

    def queryset(self, request, queryset):
        if self.value() == "all":
            return queryset
        if self.value() == "gone":
            return queryset.filter(state__in=selectors.GONE_STATES)
        return queryset.exclude(state__in=selectors.GONE_STATES)


class WorkerCommandInline(admin.TabularInline):
    model = WorkerCommand
    fields = ["created_at", "action", "status", "result", "requested_by", "finished_at"]
    readonly_fields = fields
    ordering = ["-pk"]
    extra = 0
    verbose_name_plural = "recent commands"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = [
        "hostname",
        "pid",
        "cluster_name",
        "state",
        "freshness_badge",
        "current_model",
        "batch_progress",
        "last_seen_ago",
        "memory",
        "lost",
    ]
    list_display_links = ["hostname", "pid"]
    list_filter = [ShowFilter, "state", FreshnessFilter, "hostname"]
    list_select_related = ["current_batch"]
    search_fields = ["name", "current_model", "current_batch__id"]
    ordering = ["-last_seen"]
    readonly_fields = ["freshness_badge", "batch_progress", "last_seen_ago", "memory", "host_memory"]
    fields = [
        ("name", "freshness_badge"),
        ("hostname", "pid", "cluster_name"),
        ("state", "current_model"),
        "batch_progress",
        ("last_seen", "started_at"),
        ("memory", "host_memory"),
        ("last_load_model", "last_load_seconds", "last_load_at"),
        ("lost_at", "lost_reason"),
        "unhealthy_reason",
    ]
    inlines = [WorkerCommandInline]
    actions = ["restart_workers", "clear_gpu", "kill_workers"]

    # Rows are written by the workers' heartbeats; the admin reads them and sends commands.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_operate_permission(self, request):
        return request.user.has_perm("workers.operate_worker")

    def get_urls(self):
        heartbeat = path(
            "heartbeat.json", self.admin_site.admin_view(self.heartbeat_view), name="workers_worker_heartbeat"
        )
        return [heartbeat, *super().get_urls()]

    def heartbeat_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        return JsonResponse(selectors.heartbeat_report(), headers={"Cache-Control": "no-store"})

    @admin.display(description="freshness")
    def freshness_badge(self, worker):
        return freshness_badge(worker.freshness())

    @admin.display(description="batch")
    def batch_progress(self, worker):
        batch = worker.current_batch
        if batch is None:
            return "-"
        return format_html(
            '<a href="{}">{}</a><br><progress max="100" value="{}"></progress> {}/{}',
            reverse("admin:jobs_batch_change", args=[batch.pk]),
            batch.pk,
            int(batch.progress * 100),
            batch.done_requests,
            batch.total_requests,
        )

    @admin.display(description="last seen", ordering="last_seen")
    def last_seen_ago(self, worker):
        return selectors.seconds_ago((timezone.now() - worker.last_seen).total_seconds())

    @admin.display(description="lost")
    def lost(self, worker):
        if worker.lost_at is None:
            return "-"
        return f"{selectors.seconds_ago((timezone.now() - worker.lost_at).total_seconds())}: {worker.lost_reason}"

    @admin.display(description="memory")
    def memory(self, worker):
        return format_html('<span style="white-space:nowrap">{}</span>', selectors.memory_text(worker) or "-")

    @admin.display(description="host memory used")
    def host_memory(self, worker):
        return filesizeformat(worker.host_memory_used) if worker.host_memory_used is not None else "-"

    @admin.action(description="Restart selected workers", permissions=["operate"])
    def restart_workers(self, request, queryset):
        self._send(request, queryset, WorkerCommand.Action.RESTART)

    @admin.action(description="Clear GPU of selected workers", permissions=["operate"])
    def clear_gpu(self, request, queryset):
        self._send(request, queryset, WorkerCommand.Action.CLEAR_GPU)

    @admin.action(description="Kill selected workers", permissions=["operate"])
    def kill_workers(self, request, queryset):
        for worker in queryset:
            if not self._may_run(request, worker):
                continue
            command, how = services.worker_kill(
                worker=worker, requested_by=request.user.get_username(), wait=command_wait_seconds()
            )
            if how == "signal":
                self.message_user(
                    request,
                    f"Kill of {worker}: no answer, so it was killed by signal ({command.result}).",
                    messages.SUCCESS,
                )
            elif how == "pending":
                self.message_user(
                    request,
                    f"Kill of {worker} sent; the worker has not answered yet. It runs on {worker.hostname}, "
                    "so if it hangs it cannot be killed from here: stop it on that host.",
                    messages.WARNING,
                )
            else:
                self.message_user(request, f"Kill of {worker} done: {command.result}", messages.SUCCESS)

    def _may_run(self, request, worker):
        if worker.state == Worker.State.STOPPED or not worker.process_may_run():
            self.message_user(request, f"{worker}: not running; nothing sent.", messages.WARNING)
            return False
        return True

    def _send(self, request, queryset, action):
        commands = [
            services.command_create(worker=worker, action=action, requested_by=request.user.get_username())
            for worker in queryset
            if self._may_run(request, worker)
        ]
        # One deadline for all, so selecting many workers does not multiply the wait.
        deadline = time.monotonic() + command_wait_seconds()
        for command in commands:
            command = services.command_wait(command=command, timeout=max(0.0, deadline - time.monotonic()))
            label = f"{capfirst(command.get_action_display())} of {command.worker}"
            if command.status == WorkerCommand.Status.DONE:
                self.message_user(request, f"{label} done: {command.result}", messages.SUCCESS)
            elif command.status == WorkerCommand.Status.FAILED:
                self.message_user(request, f"{label} failed: {command.result}", messages.ERROR)
            elif command.status == WorkerCommand.Status.ACKNOWLEDGED:
                self.message_user(
                    request, f"{label} acknowledged; the worker acts after its current chunk.", messages.WARNING
                )
            else:
                self.message_user(request, f"{label} sent; the worker has not answered yet.", messages.WARNING)


@admin.register(WorkerCommand)
class WorkerCommandAdmin(admin.ModelAdmin):
    list_display = ["created_at", "worker_name", "action", "status", "result", "requested_by", "finished_at"]
    list_filter = ["action", "status"]
    search_fields = ["worker_name", "result", "requested_by"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Supervisor)
class SupervisorAdmin(admin.ModelAdmin):
    """`manage.py watchdog` processes: state `failed` means it gave up restarting, with the reason."""

    list_display = ["name", "cluster_name", "state", "cluster_pid", "restarts", "last_reason", "last_restart_at"]
    list_filter = ["state", "hostname"]
    ordering = ["-last_check"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
