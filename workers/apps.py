from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate

# The imports inside these functions wait for the apps to be loaded (the modules
# import models); the worker runtime's also keeps it, and the engine host behind
# it, out of the web process, which never runs post_spawn.


def _on_worker_spawn(sender, **kwargs):
    from .runtime.lifecycle import on_worker_spawn

    on_worker_spawn(sender, **kwargs)


def _ensure_watchdog_schedule(sender, **kwargs):
    from .tasks import watchdog_schedule_ensure

    watchdog_schedule_ensure(settings.VLLM_BATCH["WATCHDOG_MINUTES"])


class WorkersConfig(AppConfig):
    name = "workers"
    verbose_name = "Workers and models"

    def ready(self):
        from django_q.signals import post_spawn

        from .console import admin  # noqa: F401  registers the admin pages of workers and models

        post_spawn.connect(_on_worker_spawn, dispatch_uid="vllm_batch_worker_spawn")
        post_migrate.connect(_ensure_watchdog_schedule, sender=self, dispatch_uid="vllm_batch_watchdog_schedule")
