import django.utils.timezone
from django.db import migrations, models


def queued_when_created(apps, schema_editor):
    Batch = apps.get_model("jobs", "Batch")
    Batch.objects.update(queued_at=models.F("created_at"))


class Migration(migrations.Migration):
    dependencies = [("jobs", "0008_batch_priority")]

    operations = [
        migrations.AddField(
            model_name="batch",
            name="queued_at",
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.RunPython(queued_when_created, migrations.RunPython.noop),
        migrations.RemoveIndex(model_name="batch", name="batch_dispatch_idx"),
        migrations.AddIndex(
            model_name="batch",
            index=models.Index(fields=["status", "-priority", "queued_at"], name="batch_dispatch_idx"),
        ),
    ]
