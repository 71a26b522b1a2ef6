from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Files and batches"

    def ready(self):
        from . import schema  # noqa: F401  registers the API key's OpenAPI description
