"""Input and output serializers of the Label Studio loop's API (OpenAPI documentation too)."""

from rest_framework import serializers

from batchsite.errors import ApiError

MAX_IDS = 10000


class WebhookReceivedSerializer(serializers.Serializer):
    status = serializers.CharField(help_text="'received': stored, processed in the background.")
    event_id = serializers.IntegerField(help_text="The stored event's id (admin: Labeling > Webhook events).")


class GroundTruthChangeSerializer(serializers.Serializer):
    annotations = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        max_length=MAX_IDS,
        help_text="Label Studio annotation ids.",
    )
    tasks = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        max_length=MAX_IDS,
        help_text="Label Studio task ids: marking takes each task's most recently updated annotation that is not "
        "cancelled; unmarking clears all of the task's annotations.",
    )

    def validate(self, attrs):
        if not attrs.get("annotations") and not attrs.get("tasks"):
            raise ApiError(
                "Give 'annotations' or 'tasks': a non-empty list of Label Studio ids.",
                param="annotations",
                code="missing_required_parameter",
            )
        return attrs


class GroundTruthListQuerySerializer(serializers.Serializer):
    limit = serializers.IntegerField(min_value=1, max_value=MAX_IDS, default=1000)
    after = serializers.IntegerField(
        min_value=0, required=False, help_text="A Label Studio annotation id: list those after it."
    )


class AnnotationSerializer(serializers.Serializer):
    """An annotation as stored from Label Studio."""

    id = serializers.IntegerField(source="ls_annotation_id", help_text="Label Studio's annotation id.")
    task = serializers.IntegerField(source="task.ls_task_id", help_text="Label Studio's task id.")
    result = serializers.JSONField(help_text="Label Studio's result list.")
    completed_by = serializers.IntegerField(allow_null=True, help_text="Label Studio user id.")
    was_cancelled = serializers.BooleanField()
    ground_truth = serializers.BooleanField(help_text="Ground truth here (Label Studio's flag, or marked here).")
    ls_ground_truth = serializers.BooleanField(help_text="Label Studio's own ground_truth flag, as last seen.")
    valid = serializers.BooleanField(help_text="Fits the project's label config.")
    invalid_reason = serializers.CharField(allow_blank=True)
    updated_at = serializers.DateTimeField(source="ls_updated_at", allow_null=True)
    ground_truth_at = serializers.DateTimeField(allow_null=True)


class GroundTruthListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    project = serializers.IntegerField(help_text="Label Studio's project id.")
    ground_truth_revision = serializers.IntegerField(help_text="Goes up on every ground-truth change.")
    data = AnnotationSerializer(many=True)
    has_more = serializers.BooleanField()
