from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate


def _ensure_file_expiry_schedule(sender, **kwargs):
    from .tasks import file_expiry_schedule_ensure

    file_expiry_schedule_ensure(settings.VLLM_BATCH["FILE_EXPIRY_MINUTES"])


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Files and batches"

    def ready(self):
        from . import (
            schema,  # noqa: F401  registers the API key's OpenAPI description
            webhook_admin,  # noqa: F401  registers the webhooks' admin pages
        )

        post_migrate.connect(_ensure_file_expiry_schedule, sender=self, dispatch_uid="vllm_batch_file_expiry_schedule")
