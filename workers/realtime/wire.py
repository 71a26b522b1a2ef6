"""The realtime protocol between the web and a worker's realtime server, spelled once.

The web POSTs {"kind", "body", "timeout", "swap"} with the worker's token in
TOKEN_HEADER; the worker answers newline-delimited JSON: {"chunk": ...} lines
when streaming, then one {"done": body} or {"error": {status, code, message,
param}} line. An error line becomes the API's error (batchsite.errors) on the web.
"""

from batchsite.errors import ApiError

TOKEN_HEADER = "X-Realtime-Token"

# The OpenAI path each kind of request answers as; "chat_many" runs several chat
# bodies together (workers.inference.chat).
KIND_ENDPOINTS = {
    "chat": "/v1/chat/completions",
    "chat_many": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}


class ModelNotLoaded(ApiError):
    status_code = 503
    error_type = "server_error"


class WorkerFailure(ApiError):
    error_type = "server_error"


def error(status, code, message, param=None):
    """An error line's payload."""
    return {"status": status, "code": code, "message": message, "param": param}


def api_error(payload):
    """The API's error for an error line: 503 ModelNotLoaded, other 5xx WorkerFailure, else ApiError."""
    status = payload.get("status", 500)
    kind = ModelNotLoaded if status == 503 else (WorkerFailure if status >= 500 else ApiError)
    return kind(payload["message"], code=payload.get("code"), param=payload.get("param"), status_code=status)
