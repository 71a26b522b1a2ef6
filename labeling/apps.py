from django.apps import AppConfig


class LabelingConfig(AppConfig):
    name = "labeling"
    verbose_name = "Label Studio"

    def ready(self):
        from jobs.signals import batch_finished

        from . import tasks

        # jobs may not import labeling: it signals a finished batch, and the loop's batches are picked out here.
        batch_finished.connect(tasks.batch_finished, dispatch_uid="labeling.tasks.batch_finished")
