"""Realtime inference: /v1/chat/completions, /v1/completions, /v1/embeddings and
/v1/inference, answered at once by a worker that holds the model.

The web process never loads a model: it forwards the request to the worker's
realtime endpoint (workers/realtime.py) and relays the answer, as server-sent
events when the client streams.
"""

import http.client
import json
import time
from urllib.parse import urlsplit

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from batchsite.errors import ApiError, NotFound, error_envelope

from . import params as P
from . import realtime_schema as S
from .models import RegisteredModel, Worker
from .selectors import worker_filter_freshness

TOKEN_HEADER = "X-Realtime-Token"
RETRY_AFTER_SECONDS = 10
MAX_TIMEOUT = 600.0


class ModelNotLoaded(ApiError):
    status_code = 503
    error_type = "server_error"


class WorkerFailure(ApiError):
    error_type = "server_error"


def default_timeout():
    return settings.VLLM_BATCH["REALTIME_TIMEOUT"]


def swaps_allowed():
    return settings.VLLM_BATCH["REALTIME_SWAP"]


def _online(workers):
    return worker_filter_freshness(queryset=workers.exclude(realtime_url=""), freshness=Worker.Freshness.ONLINE)


def realtime_worker_for(model):
    """An online worker holding `model` (any model when None), idle ones first."""
    workers = Worker.objects.exclude(current_model="").filter(state__in=[Worker.State.IDLE, Worker.State.PROCESSING])
    if model:
        workers = workers.filter(current_model=model)
    return min(_online(workers), key=lambda w: (w.state != Worker.State.IDLE, -w.last_seen.timestamp()), default=None)


def swap_worker_for(model):
    """The online worker best placed to load `model` on demand: one already
    loading it, else an idle one (an empty one first), else one running a batch."""
    states = [Worker.State.IDLE, Worker.State.PROCESSING, Worker.State.LOADING]
    workers = _online(Worker.objects.filter(state__in=states))

    def rank(w):
        if w.current_model == model:
            return 0
        if w.state == Worker.State.IDLE:
            return 1 if not w.current_model else 2
        return 3

    return min(workers, key=lambda w: (rank(w), -w.last_seen.timestamp()), default=None)


def _timeout(body):
    value = body.get("timeout", default_timeout())
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_TIMEOUT:
        raise ApiError(f"'timeout' must be a number of seconds in (0, {MAX_TIMEOUT:g}].", param="timeout")
    return float(value)


def _raise_for(error):
    status = error.get("status", 500)
    kind = ModelNotLoaded if status == 503 else (WorkerFailure if status >= 500 else ApiError)
    raise kind(error["message"], code=error.get("code"), param=error.get("param"), status_code=status)


class WorkerCall:
    """One request to a worker's realtime endpoint; iterate for its answer lines."""

    def __init__(self, worker, kind, body, timeout, swap=False):
        url = urlsplit(worker.realtime_url)
        # The worker enforces the timeout and aborts; the margin only covers the transport.
        self.connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout + 10)
        payload = json.dumps({"kind": kind, "body": body, "timeout": timeout, "swap": swap})
        try:
            self.connection.request(
                "POST", "/", payload, {TOKEN_HEADER: worker.realtime_token, "Content-Type": "application/json"}
            )
            self.response = self.connection.getresponse()
        except OSError:
            self.close()
            raise ModelNotLoaded(
                "The worker holding this model did not answer; try again shortly.", code="model_not_loaded"
            ) from None
        if self.response.status != 200:
            self.close()
            raise ModelNotLoaded("The worker refused the request.", code="model_not_loaded")

    def __iter__(self):
        try:
            while line := self.response.readline():
                yield json.loads(line)
        except TimeoutError:
            raise WorkerFailure("The request timed out.", code="timeout", status_code=504) from None
        except (OSError, ValueError):
            raise WorkerFailure("The worker failed during the request.", code="engine_error", status_code=502) from None
        finally:
            self.close()

    def close(self):
        self.connection.close()


ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def check_body(kind, body):
    """Parses the body as the worker will (workers/params.py, no vLLM), so bad
    input is 400 before any worker is asked, even when none is online."""
    try:
        if kind == "embeddings":
            P.embedding_request(body)
            return
        if kind == "chat_many":
            requests = body.get("requests")
            if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
                raise ApiError("'requests' must be a list of chat bodies.", param="requests", code="invalid_type")
            for i, request_body in enumerate(body["requests"]):
                try:
                    check_body("chat", request_body)
                except ApiError as exc:
                    exc.param = f"requests.{i}.{exc.param}" if exc.param else f"requests.{i}"
                    raise
            return
        P.sampling_kwargs(body, ENDPOINTS[kind])
        if kind == "chat":
            P.chat_messages(body)
        else:
            P.completion_prompts(body)
    except P.ParamError as exc:
        raise ApiError(exc.message, param=exc.param, code=exc.code) from None


def call_worker(kind, body):
    """Finds a worker for the body's model and starts the call (a WorkerCall)."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError("'model' must be a string.", param="model", code="invalid_type")
    if model:
        registered = RegisteredModel.objects.filter(name=model, is_active=True).first()
        if registered is None:
            raise NotFound(f"The model '{model}' does not exist.", param="model")
        if registered.serves_embeddings != (kind == "embeddings"):
            raise ApiError(
                f"The model '{model}' does not serve this endpoint.", param="model", code="model_not_supported"
            )
    timeout = _timeout(body)
    check_body(kind, body)
    worker = realtime_worker_for(model)
    swap = worker is None and bool(model) and swaps_allowed()
    if swap:
        worker = swap_worker_for(model)
    if worker is None:
        raise ModelNotLoaded(
            f"No worker has the model '{model}' loaded; try again later." if model else "No worker has a model loaded.",
            code="model_not_loaded",
            param="model",
        )
    if not model:
        body = {**body, "model": worker.current_model}
    return WorkerCall(worker, kind, body, timeout, swap=swap)


def answer(kind, body):
    """The worker's whole answer body, for a request that does not stream."""
    for line in call_worker(kind, {**body, "stream": False}):
        if "error" in line:
            _raise_for(line["error"])
        if "done" in line:
            return line["done"]
    raise WorkerFailure("The worker ended the request without an answer.", code="engine_error", status_code=502)


def _sse(data):
    return f"data: {json.dumps(data)}\n\n"


def event_stream(lines, first):
    yield _sse(first["chunk"])
    try:
        for line in lines:
            if "chunk" in line:
                yield _sse(line["chunk"])
            elif "error" in line:
                error = line["error"]
                yield _sse(error_envelope(error["message"], "server_error", error.get("param"), error.get("code")))
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
    lines = iter(call_worker(kind, body))
    first = next(lines, None)
    if first is None:
        raise WorkerFailure("The worker ended the request without an answer.", code="engine_error", status_code=502)
    if "error" in first:
        _raise_for(first["error"])
    if "done" in first:
        return StreamingHttpResponse(iter(["data: [DONE]\n\n"]), content_type="text/event-stream")
    response = StreamingHttpResponse(event_stream(lines, first), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


class RealtimeView(APIView):
    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        if isinstance(exc, ModelNotLoaded):
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
        return Response(answer(self.kind, body))


@S.generation_schema(S.ChatCompletionRequest, S.ChatCompletion, "chat_completions_create")
class ChatCompletionsView(GenerationView):
    kind, required = "chat", "messages"


@S.generation_schema(S.CompletionRequest, S.Completion, "completions_create")
class CompletionsView(GenerationView):
    kind, required = "completions", "prompt"


class EmbeddingsView(RealtimeView):
    @extend_schema(
        request={"application/json": S.EmbeddingRequest}, responses=S.EmbeddingList, operation_id="embeddings_create"
    )
    def post(self, request):
        return Response(answer("embeddings", self.body(request, ["input"])))


class InferenceView(RealtimeView):
    """One prompt or conversation in, one text out."""

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
        result = answer("chat" if "messages" in body else "completions", body)
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
