from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _ensure_event_sweep_schedule(sender, **kwargs):
    from .tasks import event_sweep_schedule_ensure

    event_sweep_schedule_ensure()


class LabelingConfig(AppConfig):
    name = "labeling"
    verbose_name = "Label Studio"

    def ready(self):
        from jobs.signals import batch_finished

        from . import tasks

        # jobs may not import labeling: it signals a finished batch, and the loop's batches are picked out here.
        batch_finished.connect(tasks.batch_finished, dispatch_uid="labeling.tasks.batch_finished")
        post_migrate.connect(
            _ensure_event_sweep_schedule, sender=self, dispatch_uid="vllm_batch_labelstudio_event_sweep_schedule"
        )
