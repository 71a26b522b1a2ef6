"""The web side of realtime inference: finds an online worker holding the model
and asks its realtime server (workers/realtime/server.py) over the wire protocol
(wire.py). Runs in the web process and never loads a model."""

import http.client
import json
from urllib.parse import urlsplit

from django.conf import settings

from batchsite.errors import ApiError

from .. import selectors
from ..bodies import params as P
from . import wire

MAX_TIMEOUT = 600.0


def default_timeout():
    return settings.VLLM_BATCH["REALTIME_TIMEOUT"]


def swaps_allowed():
    return settings.VLLM_BATCH["REALTIME_SWAP"]


def _timeout(body):
    value = body.get("timeout", default_timeout())
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_TIMEOUT:
        raise ApiError(f"'timeout' must be a number of seconds in (0, {MAX_TIMEOUT:g}].", param="timeout")
    return float(value)


class WorkerCall:
    """One request to a worker's realtime server; iterate for its answer lines."""

    def __init__(self, worker, kind, body, timeout, swap=False):
        url = urlsplit(worker.realtime_url)
        # The worker enforces the timeout and aborts; the margin only covers the transport.
        self.connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout + 10)
        payload = json.dumps({"kind": kind, "body": body, "timeout": timeout, "swap": swap})
        try:
            self.connection.request(
                "POST", "/", payload, {wire.TOKEN_HEADER: worker.realtime_token, "Content-Type": "application/json"}
            )
            self.response = self.connection.getresponse()
        except OSError:
            self.close()
            raise wire.ModelNotLoaded(
                "The worker holding this model did not answer; try again shortly.", code="model_not_loaded"
            ) from None
        if self.response.status != 200:
            self.close()
            raise wire.ModelNotLoaded("The worker refused the request.", code="model_not_loaded")

    def __iter__(self):
        try:
            while line := self.response.readline():
                yield json.loads(line)
        except TimeoutError:
            raise wire.WorkerFailure("The request timed out.", code="timeout", status_code=504) from None
        except (OSError, ValueError):
            raise wire.WorkerFailure(
                "The worker failed during the request.", code="engine_error", status_code=502
            ) from None
        finally:
            self.close()

    def close(self):
        self.connection.close()


def check_body(kind, body):
    """Parses the body as the worker will (workers/bodies/params.py, no vLLM), so
    bad input is 400 before any worker is asked, even when none is online."""
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
        P.sampling_kwargs(body, wire.KIND_ENDPOINTS[kind])
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
        selectors.model_for_endpoint(model, wire.KIND_ENDPOINTS[kind])
    timeout = _timeout(body)
    check_body(kind, body)
    endpoint = wire.KIND_ENDPOINTS[kind]
    worker = selectors.realtime_worker_for(model, endpoint)
    swap = worker is None and bool(model) and swaps_allowed()
    if swap:
        worker = selectors.swap_worker_for(model)
    if worker is None:
        raise wire.ModelNotLoaded(
            f"No worker has the model '{model}' loaded; try again later."
            if model
            else f"No worker has a model loaded that serves {endpoint}; try again later.",
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
            raise wire.api_error(line["error"])
        if "done" in line:
            return line["done"]
    raise wire.WorkerFailure("The worker ended the request without an answer.", code="engine_error", status_code=502)
