from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _ensure_watchdog_schedule(sender, **kwargs):
    from django.conf import settings

    from .watchdog import ensure_schedule

    ensure_schedule(settings.VLLM_BATCH["WATCHDOG_MINUTES"])


class WorkersConfig(AppConfig):
    name = "workers"
    verbose_name = "Workers and models"

    def ready(self):
        from django_q.signals import post_spawn

        from .lifecycle import on_worker_spawn

        post_spawn.connect(on_worker_spawn, dispatch_uid="vllm_batch_worker_spawn")
        post_migrate.connect(_ensure_watchdog_schedule, sender=self, dispatch_uid="vllm_batch_watchdog_schedule")
