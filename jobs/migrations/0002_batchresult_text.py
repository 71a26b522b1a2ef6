import json

from django.db import migrations, models

# As jobs.jsonl.dumps_line at the time of writing (a migration keeps its own copy).
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def payload_to_text(apps, schema_editor):
    """Results of batches still running during the upgrade keep their lines."""
    BatchResult = apps.get_model("jobs", "BatchResult")
    for row in BatchResult.objects.all().iterator(chunk_size=2000):
        row.text = json.dumps(row.payload, ensure_ascii=False).translate(_LINE_BREAKS)
        row.save(update_fields=["text"])


def text_to_payload(apps, schema_editor):
    BatchResult = apps.get_model("jobs", "BatchResult")
    for row in BatchResult.objects.all().iterator(chunk_size=2000):
        row.payload = json.loads(row.text)
        row.save(update_fields=["payload"])


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="batchresult",
            name="text",
            field=models.TextField(
                default="", help_text="The output or error file's line for this request: one JSON object."
            ),
            preserve_default=False,
        ),
        migrations.RunPython(payload_to_text, text_to_payload),
        migrations.RemoveField(
            model_name="batchresult",
            name="payload",
        ),
    ]
