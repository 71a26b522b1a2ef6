"""Realtime inference: /v1/chat/completions, /v1/completions, /v1/embeddings and
/v1/inference, answered at once by a worker that holds the model.

The web process never loads a model: client.py forwards the request to a
worker's realtime server and these views relay the answer, as server-sent events
when the client streams.
"""

import json
import time

from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from batchsite.errors import ApiError

from . import client, latency, quota, wire
from . import schema as S

RETRY_AFTER_SECONDS = 10


def _sse(data):
    return f"data: {json.dumps(data)}\n\n"


def event_stream(lines, first):
    yield _sse(first["chunk"])
    try:
        for line in lines:
            if "chunk" in line:
                yield _sse(line["chunk"])
            elif "error" in line:
                yield _sse(wire.api_error(line["error"]).envelope())
                return
            else:
                break
    except ApiError as exc:
        yield _sse(exc.envelope())
        return
    yield "data: [DONE]\n\n"


def streamed(kind, body):
    """Relays the worker's chunks as server-sent events; errors before the first
    chunk still come back as a plain error response."""
    lines = iter(client.call_worker(kind, body))
    first = next(lines, None)
    if first is None:
        raise wire.WorkerFailure(
            "The worker ended the request without an answer.", code="engine_error", status_code=502
        )
    if "error" in first:
        raise wire.api_error(first["error"])
    if "done" in first:
        return StreamingHttpResponse(iter(["data: [DONE]\n\n"]), content_type="text/event-stream")
    response = StreamingHttpResponse(event_stream(lines, first), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _released_after(iterator, release):
    try:
        yield from iterator
    finally:
        release()


class RealtimeView(APIView):
    """Holds one of the owner's realtime slots (quota.py) from authentication until
    the answer, or its stream, has been sent, and times the request until then."""

    endpoint = None
    slot_owner = None
    started = None

    def initial(self, request, *args, **kwargs):
        self.started = time.monotonic()
        super().initial(request, *args, **kwargs)
        if quota.acquire(request.user.pk):
            self.slot_owner = request.user.pk

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        owner, self.slot_owner = self.slot_owner, None
        started, self.started = self.started, None

        def done():
            if started is not None:
                latency.observe(self.endpoint, response.status_code, time.monotonic() - started)
            if owner is not None:
                quota.release(owner)

        if response.streaming:
            response.streaming_content = _released_after(response.streaming_content, done)
        else:
            done()
        return response

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        if isinstance(exc, wire.ModelNotLoaded):
            response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    def body(self, request, required):
        body = request.data
        if not isinstance(body, dict):
            raise ApiError("The request body must be a JSON object.", code="invalid_type")
        missing = [name for name in required if name not in body]
        if missing:
            raise ApiError(f"'{missing[0]}' is required.", param=missing[0], code="missing_required_parameter")
        return body


class GenerationView(RealtimeView):
    """Chat or text completions, streamed when the body asks for it."""

    kind = None
    required = None

    def post(self, request):
        body = self.body(request, [self.required])
        if body.get("stream"):
            return streamed(self.kind, body)
        return Response(client.answer(self.kind, body))


@S.generation_schema(S.ChatCompletionRequest, S.ChatCompletion, "chat_completions_create")
class ChatCompletionsView(GenerationView):
    kind, required, endpoint = "chat", "messages", "/v1/chat/completions"


@S.generation_schema(S.CompletionRequest, S.Completion, "completions_create")
class CompletionsView(GenerationView):
    kind, required, endpoint = "completions", "prompt", "/v1/completions"


class EmbeddingsView(RealtimeView):
    endpoint = "/v1/embeddings"

    @extend_schema(
        request={"application/json": S.EmbeddingRequest}, responses=S.EmbeddingList, operation_id="embeddings_create"
    )
    def post(self, request):
        return Response(client.answer("embeddings", self.body(request, ["input"])))


class InferenceView(RealtimeView):
    """One prompt or conversation in, one text out."""

    endpoint = "/v1/inference"

    @extend_schema(
        request={"application/json": S.InferenceRequest}, responses=S.InferenceResult, operation_id="inference_create"
    )
    def post(self, request):
        body = self.body(request, [])
        if "messages" not in body and "prompt" not in body:
            raise ApiError("Send 'messages' or 'prompt'.", param="messages", code="missing_required_parameter")
        if "json_schema" in body:
            body = {**body, "guided_json": body["json_schema"]}
        started = time.monotonic()
        result = client.answer("chat" if "messages" in body else "completions", body)
        choice = result["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        return Response(
            {
                "text": text,
                "model": result["model"],
                "usage": result["usage"],
                "latency_ms": round((time.monotonic() - started) * 1000),
                "finish_reason": choice["finish_reason"],
            }
        )
