"""The worker's realtime endpoint: a small HTTP server in the worker process that
runs single requests on the engine the worker holds, alongside a running batch.

Only the web process talks to it: it listens on 127.0.0.1 unless the
REALTIME_HOST setting says otherwise, and every request must carry this
process's random token, which the heartbeat writes to the Worker row with the URL.
The protocol is workers/realtime/wire.py's.
"""

import json
import logging
import secrets
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager, nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from django.conf import settings
from django.db import close_old_connections

from .. import selectors, state
from ..bodies import params as P
from ..bodies import responses
from ..engine import host as engine_host
from ..engine.types import EngineDead, EngineError, GenerateItem
from . import wire

logger = logging.getLogger(__name__)

_server = None
_token = secrets.token_urlsafe(24)


class RealtimeFailure(Exception):
    def __init__(self, status, code, message, param=None):
        super().__init__(message)
        self.error = wire.error(status, code, message, param)


def url():
    if _server is None:
        return ""
    host, port = _server.server_address[:2]
    return f"http://{host}:{port}"


def token():
    return _token if _server is not None else ""


def start():
    """Starts the server on a daemon thread; the heartbeat publishes its URL."""
    global _server
    if _server is None:
        address = (settings.VLLM_BATCH["REALTIME_HOST"], settings.VLLM_BATCH["REALTIME_PORT"])
        _server = ThreadingHTTPServer(address, Handler)
        _server.daemon_threads = True
        threading.Thread(target=_server.serve_forever, name="realtime", daemon=True).start()
        logger.info("realtime server on %s", url())


@contextmanager
def _engine_for(model, swap, deadline):
    """Holds the engine serving `model` for the request. With `swap` (the operator
    allows on-demand swaps) a worker holding another model loads this one: a
    running batch hands its engine back at its next chunk and waits."""
    if not (swap and model):
        with engine_host.in_use(model) as engine:
            if engine is None:
                raise RealtimeFailure(503, "model_not_loaded", f"This worker does not hold the model '{model}'.")
            yield engine
        return
    try:
        registered = selectors.model_get_active(model)
    finally:
        close_old_connections()
    if registered is None:
        raise RealtimeFailure(404, "model_not_found", f"The model '{model}' does not exist.", "model")
    swapping = engine_host.loaded_model_name() != model
    if swapping:
        logger.info("realtime request swaps the engine to %s", model)
    with ExitStack() as stack:
        with state.swap_wanted() if swapping else nullcontext():
            try:
                engine = stack.enter_context(engine_host.engine_for(registered, deadline=deadline, for_realtime=True))
            except engine_host.EngineBusy:
                raise RealtimeFailure(
                    504, "timeout", "The model swap did not happen within the request's timeout."
                ) from None
        if swapping:
            state.poke()
        yield engine


def _items(kind, body):
    try:
        sampling = P.sampling_kwargs(body, wire.KIND_ENDPOINTS[kind])
        if kind == "chat":
            options = P.chat_options(body)
            return [GenerateItem(key=0, sampling=sampling, chat=P.chat_messages(body), chat_options=options)]
        return [GenerateItem(key=i, sampling=sampling, prompt=p) for i, p in enumerate(P.completion_prompts(body))]
    except P.ParamError as exc:
        raise RealtimeFailure(400, exc.code, exc.message, exc.param) from None


def _result(engine, request, deadline):
    try:
        kind, value = engine.next_event(request, max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        engine.cancel(request)
        raise RealtimeFailure(504, "timeout", "The request timed out in the engine and was aborted.") from None
    if kind == "error":
        raise RealtimeFailure(400, value.code, value.message, value.param)
    return kind, value


def generate(engine, kind, body, deadline):
    """The OpenAI body for a chat or completions request."""
    requests = [engine.submit(item) for item in _items(kind, body)]
    try:
        generations = [_result(engine, r, deadline)[1] for r in requests]
    except RealtimeFailure:
        for r in requests:
            engine.cancel(r)
        raise
    if kind == "chat":
        return responses.chat_completion(generations[0], engine.name)
    return responses.text_completion(generations, engine.name)


def generate_many(engine, body, deadline):
    """Several chat requests submitted to the engine together (so they share its
    steps), answered in order: {"body": chat.completion} or {"error": {...}} each.
    A request the engine refuses on its own fails alone."""
    outcomes = [None] * len(body["requests"])
    requests = []
    for i, request_body in enumerate(body["requests"]):
        try:
            requests.append((i, engine.submit(_items("chat", request_body)[0])))
        except RealtimeFailure as exc:
            outcomes[i] = {"error": exc.error}
    try:
        for i, request in requests:
            try:
                outcomes[i] = {"body": responses.chat_completion(_result(engine, request, deadline)[1], engine.name)}
            except RealtimeFailure as exc:
                if exc.error["code"] == "timeout":
                    raise
                outcomes[i] = {"error": exc.error}
    except BaseException:
        for _, request in requests:
            engine.cancel(request)
        raise
    return outcomes


def _chunk(kind, chunk_id, created, model, choices, usage=None):
    body = {
        "id": chunk_id,
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def stream(engine, kind, body, deadline):
    """Yields OpenAI chunks for a streamed chat or completions request."""
    items = _items(kind, body)
    if len(items) != 1:
        raise RealtimeFailure(400, "unsupported_parameter", "Streaming takes a single prompt.", "prompt")
    request = engine.submit(items[0], stream=True)
    chunk_id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    prompt_tokens = completion_tokens = 0
    started = set()
    try:
        while True:
            event, delta = _result(engine, request, deadline)
            if event == "done":
                break
            prompt_tokens = prompt_tokens or delta["prompt_tokens"]
            choices = []
            for c in delta["choices"]:
                completion_tokens += c["tokens"]
                if kind == "chat":
                    content = {"content": c["text"]}
                    if c["index"] not in started:
                        content = {"role": "assistant", **content}
                    started.add(c["index"])
                    choices.append({"index": c["index"], "delta": content, "finish_reason": c["finish_reason"]})
                else:
                    choices.append({"index": c["index"], "text": c["text"], "finish_reason": c["finish_reason"]})
            yield _chunk(kind, chunk_id, created, engine.name, choices)
    except BaseException:
        engine.cancel(request)
        raise
    options = body.get("stream_options") or {}
    if isinstance(options, dict) and options.get("include_usage"):
        usage = responses._usage(prompt_tokens, completion_tokens)
        yield _chunk(kind, chunk_id, created, engine.name, [], usage)


def embed(engine, body, deadline):
    try:
        inputs, dimensions, encoding = P.embedding_request(body)
    except P.ParamError as exc:
        raise RealtimeFailure(400, exc.code, exc.message, exc.param) from None
    try:
        vectors = engine.embed(inputs, dimensions=dimensions, timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        raise RealtimeFailure(504, "timeout", "The engine stayed busy past the request's timeout.") from None
    failure = next((v for v in vectors if isinstance(v, EngineError)), None)
    if failure is not None:
        raise RealtimeFailure(400, failure.code, failure.message, failure.param)
    return responses.embedding_list(vectors, engine.name, encoding)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args):
        logger.debug("realtime %s", format % args)

    def do_POST(self):
        if not secrets.compare_digest(self.headers.get(wire.TOKEN_HEADER, ""), _token):
            self.send_error(403)
            return
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        kind, body = request["kind"], request["body"]
        deadline = time.monotonic() + float(request.get("timeout", 60))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        try:
            with _engine_for(body.get("model"), request.get("swap", False), deadline) as engine:
                if kind == "embeddings":
                    self._line({"done": embed(engine, body, deadline)})
                elif kind == "chat_many":
                    self._line({"done": generate_many(engine, body, deadline)})
                elif body.get("stream"):
                    for chunk in stream(engine, kind, body, deadline):
                        self._line({"chunk": chunk})
                    self._line({"done": None})
                else:
                    self._line({"done": generate(engine, kind, body, deadline)})
        except RealtimeFailure as exc:
            self._line({"error": exc.error})
        except EngineDead:
            logger.exception("the engine died during a realtime request")
            message = "The engine holding this model stopped; try again shortly."
            self._line({"error": wire.error(503, "model_not_loaded", message)})
        except (BrokenPipeError, ConnectionResetError):
            logger.info("realtime client went away; request aborted")
        except Exception:
            # The exception's text can hold paths, prompts or internals: it goes to the
            # log, and the client gets an id to quote.
            request_id = f"req_{uuid.uuid4().hex}"
            logger.exception("realtime request %s failed", request_id)
            message = f"The server had an error while processing your request (request id {request_id})."
            self._line({"error": wire.error(500, "engine_error", message)})

    def _line(self, payload):
        self.wfile.write(json.dumps(payload).encode() + b"\n")
        self.wfile.flush()
