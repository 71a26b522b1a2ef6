"""Input serializers (validation) and output serializers (OpenAPI documentation)."""

from datetime import UTC, datetime

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from batchsite.errors import ApiError

from .models import Batch, File
from .services import COMPLETION_WINDOWS
from .validation import metadata_priority_problem

# OpenAI's bounds on a file's expires_after: one hour to 30 days.
EXPIRES_AFTER_SECONDS = (3600, 30 * 24 * 3600)
# 9999-12-31T23:59:59Z: later Unix seconds have no datetime (found by the schema fuzz: a 500).
MAX_TIMESTAMP = 253_402_300_799


@extend_schema_field(OpenApiTypes.BINARY)
class UploadField(serializers.FileField):
    """The schema's file part: drf-spectacular documents a FileField as a URI string
    unless request components are split, and clients built from the schema then send a string."""


class FileUploadSerializer(serializers.Serializer):
    file = UploadField(help_text="A JSONL file, one request per line.", allow_empty_file=True)
    purpose = serializers.ChoiceField(choices=[File.Purpose.BATCH], help_text="Only 'batch' is accepted for uploads.")

    def get_fields(self):
        # The multipart names OpenAI's SDK sends for the expires_after object.
        fields = super().get_fields()
        fields["expires_after[anchor]"] = serializers.ChoiceField(
            choices=["created_at"], required=False, help_text="What the expiry counts from: only 'created_at'."
        )
        fields["expires_after[seconds]"] = serializers.IntegerField(
            min_value=EXPIRES_AFTER_SECONDS[0],
            max_value=EXPIRES_AFTER_SECONDS[1],
            required=False,
            help_text="The file is deleted this many seconds after the anchor (3600 to 2592000).",
        )
        return fields

    def validate(self, data):
        anchor, seconds = data.get("expires_after[anchor]"), data.get("expires_after[seconds]")
        if (anchor is None) != (seconds is None):
            missing = "expires_after[seconds]" if seconds is None else "expires_after[anchor]"
            raise ApiError(
                f"Missing required parameter: '{missing}'.", code="missing_required_parameter", param=missing
            )
        return data


class FileListQuerySerializer(serializers.Serializer):
    purpose = serializers.ChoiceField(choices=File.Purpose.choices, required=False)
    limit = serializers.IntegerField(min_value=1, max_value=10000, default=10000)
    after = serializers.CharField(required=False, help_text="A file id: list the files after it.")
    order = serializers.ChoiceField(choices=["asc", "desc"], default="desc")


class BatchListQuerySerializer(serializers.Serializer):
    limit = serializers.IntegerField(min_value=1, max_value=100, default=20)
    after = serializers.CharField(required=False, help_text="A batch id: list the batches after it.")
    # Extensions to OpenAI's list (history filters): absent, the list is OpenAI's.
    status = serializers.ChoiceField(choices=Batch.Status.choices, required=False, help_text="Extension.")
    model = serializers.CharField(required=False, max_length=200, help_text="Extension.")
    created_after = serializers.IntegerField(
        required=False, min_value=0, max_value=MAX_TIMESTAMP, help_text="Extension: Unix seconds, created at or after."
    )
    created_before = serializers.IntegerField(
        required=False, min_value=0, max_value=MAX_TIMESTAMP, help_text="Extension: Unix seconds, created before."
    )

    def validate(self, data):
        for name in ("created_after", "created_before"):
            if name in data:
                data[name] = datetime.fromtimestamp(data[name], tz=UTC)
        return data


def _validate_metadata(value):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(
            "metadata must be an object of string keys and string values.", code="invalid_type", param="metadata"
        )
    limit = settings.VLLM_BATCH["MAX_METADATA_PAIRS"]
    if len(value) > limit:
        raise ApiError(f"metadata may hold at most {limit} pairs.", code="invalid_value", param="metadata")
    for key, item in value.items():
        if not isinstance(item, str):
            raise ApiError(f"metadata.{key} must be a string.", code="invalid_type", param=f"metadata.{key}")
        if len(key) > 64:
            raise ApiError("metadata keys may be at most 64 characters.", code="invalid_value", param="metadata")
        if len(item) > 512:
            raise ApiError(
                "metadata values may be at most 512 characters.", code="invalid_value", param=f"metadata.{key}"
            )
    problem = metadata_priority_problem(value)
    if problem:
        raise ApiError(problem, code="invalid_value", param="metadata.priority")
    return value


class BatchCreateSerializer(serializers.Serializer):
    input_file_id = serializers.CharField(help_text="The id of an uploaded file with purpose 'batch'.")
    endpoint = serializers.ChoiceField(choices=Batch.Endpoint.choices, help_text="The endpoint every request calls.")
    completion_window = serializers.ChoiceField(choices=list(COMPLETION_WINDOWS), help_text="Only '24h'.")
    metadata = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text='Up to 16 string key-value pairs. Extension: "priority" ("-1", "0" or "1", default "0") orders '
        "the queue: higher runs first, then the oldest.",
    )

    def validate_metadata(self, value):
        return _validate_metadata(value)


class FileObjectSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(help_text="Always 'file'.")
    bytes = serializers.IntegerField()
    created_at = serializers.IntegerField(help_text="Unix seconds.")
    expires_at = serializers.IntegerField(allow_null=True)
    filename = serializers.CharField()
    purpose = serializers.ChoiceField(choices=File.Purpose.choices)
    status = serializers.CharField(help_text="Always 'processed'.")
    status_details = serializers.CharField(allow_null=True)


class RequestCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()


class BatchObjectSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(help_text="Always 'batch'.")
    endpoint = serializers.CharField()
    model = serializers.CharField(allow_null=True, help_text="The model the requests name, once validated.")
    errors = serializers.JSONField(
        allow_null=True, help_text="{'object': 'list', 'data': [...]} when validation failed."
    )
    input_file_id = serializers.CharField()
    completion_window = serializers.CharField()
    status = serializers.ChoiceField(choices=Batch.Status.choices)
    output_file_id = serializers.CharField(allow_null=True)
    error_file_id = serializers.CharField(allow_null=True)
    created_at = serializers.IntegerField()
    in_progress_at = serializers.IntegerField(allow_null=True)
    expires_at = serializers.IntegerField()
    finalizing_at = serializers.IntegerField(allow_null=True)
    completed_at = serializers.IntegerField(allow_null=True)
    failed_at = serializers.IntegerField(allow_null=True)
    expired_at = serializers.IntegerField(allow_null=True)
    cancelling_at = serializers.IntegerField(allow_null=True)
    cancelled_at = serializers.IntegerField(allow_null=True)
    request_counts = RequestCountsSerializer()
    usage = serializers.JSONField(help_text="Token totals: input_tokens, output_tokens, total_tokens.")
    metadata = serializers.JSONField(allow_null=True)
    queue_position = serializers.IntegerField(
        allow_null=True,
        help_text="Extension: 1 is next among the waiting batches of every owner (priority, then age); "
        "null when running or finished.",
    )
    estimated_start_at = serializers.IntegerField(
        allow_null=True,
        help_text="Extension, unix seconds: when a waiting batch should start, from the measured request rate "
        "of recent batches; null when running, finished or no rate is known.",
    )
    estimated_finish_at = serializers.IntegerField(
        allow_null=True,
        help_text="Extension, unix seconds: when a waiting or running batch should finish; null when finished "
        "or no rate is known.",
    )


class ListSerializer(serializers.Serializer):
    object = serializers.CharField(help_text="Always 'list'.")
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class FileListSerializer(ListSerializer):
    data = FileObjectSerializer(many=True)


class BatchListSerializer(ListSerializer):
    data = BatchObjectSerializer(many=True)


class DeletedFileSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    deleted = serializers.BooleanField()


class RunningBatchSerializer(serializers.Serializer):
    id = serializers.CharField()
    model = serializers.CharField()
    total_requests = serializers.IntegerField()
    done_requests = serializers.IntegerField()
    progress = serializers.FloatField(help_text="0 to 1.")
    output_tokens_per_second = serializers.FloatField(allow_null=True)
    eta_seconds = serializers.FloatField(allow_null=True, help_text="Null until a request is done.")


class QueuedBatchSerializer(serializers.Serializer):
    id = serializers.CharField()
    model = serializers.CharField()
    status = serializers.ChoiceField(choices=Batch.Status.choices)
    total_requests = serializers.IntegerField()
    position = serializers.IntegerField(help_text="1 is next, counting every owner's batches.")
    created_at = serializers.IntegerField()
    estimated_start_seconds = serializers.FloatField(
        allow_null=True, help_text="From now; null when no recent batch gives a rate."
    )


class QueueSerializer(serializers.Serializer):
    object = serializers.CharField(help_text="Always 'queue'.")
    workers_online = serializers.IntegerField()
    running = RunningBatchSerializer(many=True, help_text="The caller's batches being processed.")
    running_total = serializers.IntegerField(help_text="Batches being processed, of every owner.")
    queued = QueuedBatchSerializer(many=True, help_text="The caller's waiting batches, in order.")
    queued_total = serializers.IntegerField(help_text="Batches waiting, of every owner.")


class ModelStatsSerializer(serializers.Serializer):
    model = serializers.CharField()
    batches = serializers.IntegerField()
    requests_completed = serializers.IntegerField()
    requests_failed = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()


class HourStatsSerializer(serializers.Serializer):
    start = serializers.IntegerField(help_text="Unix seconds of the hour's start.")
    batches_completed = serializers.IntegerField()
    requests_completed = serializers.IntegerField()
    output_tokens = serializers.IntegerField()


class StatsSerializer(serializers.Serializer):
    object = serializers.CharField(help_text="Always 'stats'.")
    total_batches = serializers.IntegerField()
    by_status = serializers.DictField(child=serializers.IntegerField())
    by_model = ModelStatsSerializer(many=True)
    success_rate = serializers.FloatField(allow_null=True, help_text="Completed batches over finished batches.")
    average_duration_seconds = serializers.FloatField(
        allow_null=True, help_text="Completed batches, in progress to completed."
    )
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    hourly = HourStatsSerializer(many=True, help_text="The last 24 hours, oldest first; completed batches.")
