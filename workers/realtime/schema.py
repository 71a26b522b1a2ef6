"""The realtime endpoints' bodies, for the OpenAPI schema only: the views pass the
body on to the worker, which validates it (workers/bodies/params.py) as batches do."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers


class _Sampling(serializers.Serializer):
    model = serializers.CharField(required=False, help_text="A registered model; default: the one a worker holds.")
    max_tokens = serializers.IntegerField(required=False, min_value=1)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, min_value=0, max_value=1)
    n = serializers.IntegerField(required=False, min_value=1, max_value=128)
    stop = serializers.JSONField(required=False, help_text="A string or a list of strings.")
    seed = serializers.IntegerField(required=False)
    presence_penalty = serializers.FloatField(required=False, min_value=-2, max_value=2)
    frequency_penalty = serializers.FloatField(required=False, min_value=-2, max_value=2)
    guided_choice = serializers.ListField(child=serializers.CharField(), required=False, min_length=1)
    guided_json = serializers.JSONField(required=False, help_text="A JSON schema the output must match.")
    timeout = serializers.FloatField(
        required=False, min_value=0.001, max_value=600, help_text="Seconds before 504 and an abort in the engine."
    )


class _Streaming(_Sampling):
    stream = serializers.BooleanField(required=False, help_text="Server-sent events in OpenAI's chunk format.")


class ChatCompletionRequest(_Streaming):
    messages = serializers.ListField(child=serializers.DictField(), min_length=1)
    max_completion_tokens = serializers.IntegerField(required=False, min_value=1)
    response_format = serializers.DictField(required=False, help_text="`text`, `json_object` or `json_schema`.")
    logprobs = serializers.BooleanField(required=False)
    top_logprobs = serializers.IntegerField(required=False, min_value=0, max_value=20)


class CompletionRequest(_Streaming):
    prompt = serializers.JSONField(help_text="A string, a list of strings, or token ids.")
    logprobs = serializers.IntegerField(required=False, min_value=0, max_value=20)


class EmbeddingRequest(serializers.Serializer):
    model = serializers.CharField(required=False)
    input = serializers.JSONField(help_text="A string, a list of strings, or token ids.")
    dimensions = serializers.IntegerField(required=False, min_value=1)
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], required=False)
    timeout = serializers.FloatField(required=False, min_value=0.001, max_value=600)


class InferenceRequest(_Sampling):
    messages = serializers.ListField(child=serializers.DictField(), required=False, help_text="Or `prompt`.")
    prompt = serializers.CharField(required=False, help_text="Or `messages`.")
    response_format = serializers.DictField(required=False)
    json_schema = serializers.JSONField(required=False, help_text="Same as `guided_json`.")


class Usage(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField(required=False)
    total_tokens = serializers.IntegerField()


class _Message(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField(allow_null=True)


class _Choice(serializers.Serializer):
    index = serializers.IntegerField()
    finish_reason = serializers.CharField(allow_null=True)
    logprobs = serializers.JSONField(allow_null=True)


class _ChatChoice(_Choice):
    message = _Message()


class _TextChoice(_Choice):
    text = serializers.CharField()


class _Answer(serializers.Serializer):
    id = serializers.CharField()
    created = serializers.IntegerField()
    model = serializers.CharField()
    usage = Usage()


class ChatCompletion(_Answer):
    object = serializers.CharField(help_text="Always 'chat.completion'.")
    choices = _ChatChoice(many=True)


class Completion(_Answer):
    object = serializers.CharField(help_text="Always 'text_completion'.")
    choices = _TextChoice(many=True)


class _Embedding(serializers.Serializer):
    object = serializers.CharField(help_text="Always 'embedding'.")
    index = serializers.IntegerField()
    embedding = serializers.JSONField(help_text="A list of floats, or base64 of little-endian float32.")


class EmbeddingList(serializers.Serializer):
    object = serializers.CharField(help_text="Always 'list'.")
    data = _Embedding(many=True)
    model = serializers.CharField()
    usage = Usage()


class InferenceResult(serializers.Serializer):
    text = serializers.CharField()
    model = serializers.CharField()
    usage = Usage()
    latency_ms = serializers.IntegerField()
    finish_reason = serializers.CharField(allow_null=True)


def generation_schema(request, answer, operation_id):
    """The schema of a POST that answers JSON, or server-sent events with `stream: true`."""
    return extend_schema_view(
        post=extend_schema(
            request={"application/json": request},
            responses={(200, "application/json"): answer, (200, "text/event-stream"): OpenApiTypes.STR},
            operation_id=operation_id,
        )
    )
