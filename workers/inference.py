"""Inference for other apps (the Label Studio backend): generations and embeddings
from the worker that holds a model, without knowing about workers, tokens or HTTP.

Runs in the web process and never loads a model. Errors that stop the whole call
raise the API's errors (batchsite.errors.ApiError and subclasses): 404 unknown model,
400 bad parameters or a model that does not serve the kind, 503
`model_not_loaded` when no online worker holds the model, 504 `timeout`, 502
when the worker fails. A request the engine refuses on its own (a prompt too
long) fails alone, as `ChatResult.error`.
"""

from dataclasses import dataclass, field

from .realtime import client


@dataclass
class ChatResult:
    text: str | None
    finish_reason: str | None = None
    # (token, logprob) of each generated token, when the request asked for logprobs.
    token_logprobs: list = field(default_factory=list)
    usage: dict = field(default_factory=dict)
    # {"code", "message", "param"} when this request failed on its own.
    error: dict | None = None
    body: dict | None = None  # the whole chat.completion body


def _chat_result(outcome):
    if "error" in outcome:
        error = outcome["error"]
        return ChatResult(text=None, error={k: error.get(k) for k in ("code", "message", "param")})
    body = outcome["body"]
    choice = body["choices"][0]
    logprobs = (choice.get("logprobs") or {}).get("content") or []
    return ChatResult(
        text=choice["message"]["content"],
        finish_reason=choice["finish_reason"],
        token_logprobs=[(entry["token"], entry["logprob"]) for entry in logprobs],
        usage=body["usage"],
        body=body,
    )


def chat(requests, *, model, timeout=None):
    """Runs chat-completions bodies (OpenAI's, without `model`) together on the
    worker holding `model`; one ChatResult per request, in order."""
    if not requests:
        return []
    body = {"model": model, "requests": list(requests)}
    if timeout is not None:
        body["timeout"] = timeout
    return [_chat_result(outcome) for outcome in client.answer("chat_many", body)]


def embed(texts, *, model, timeout=None):
    """Embedding vectors for `texts` from the worker holding the pooling `model`."""
    if not texts:
        return []
    body = {"model": model, "input": list(texts)}
    if timeout is not None:
        body["timeout"] = timeout
    return [item["embedding"] for item in client.answer("embeddings", body)["data"]]
