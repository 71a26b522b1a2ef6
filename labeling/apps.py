from django.apps import AppConfig
from django.db.models.signals import post_save


class LabelingConfig(AppConfig):
    name = "labeling"
    verbose_name = "Label Studio"

    def ready(self):
        from . import push

        # jobs may not import labeling: a user's batch naming a Label Studio project is noticed here.
        post_save.connect(push.batch_saved, sender="jobs.Batch", dispatch_uid="labeling.push.batch_saved")
