"""Validation of a batch input file, line by line, as OpenAI's Batch API does it.

Every problem carries OpenAI's `code`, `message`, `param` and 1-based `line`.
"""

import json
from dataclasses import dataclass, field

from django.conf import settings

MAX_REPORTED_ERRORS = 100

REQUIRED_BODY_FIELD = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
}


@dataclass
class ValidationResult:
    total: int = 0
    model: str = ""
    errors: list = field(default_factory=list)
    error_count: int = 0

    def add(self, code, message, line, param=None):
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})

    @property
    def ok(self):
        return self.error_count == 0


def iter_request_lines(stream):
    """Yields (line_number, raw_bytes) for the non-blank lines of a JSONL stream."""
    for number, raw in enumerate(stream, start=1):
        if raw.strip():
            yield number, raw


def _check_line(number, raw, endpoint, result, seen_ids, model_lookup):
    try:
        request = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        result.add("invalid_json_line", f"Line {number} is not valid JSON: {exc}.", number)
        return
    if not isinstance(request, dict):
        result.add("invalid_json_line", f"Line {number} is not a JSON object.", number)
        return
    for name in ("custom_id", "method", "url", "body"):
        if name not in request:
            result.add("missing_required_parameter", f"Missing required parameter: '{name}'.", number, name)
            return
    custom_id = request["custom_id"]
    if not isinstance(custom_id, str) or not custom_id:
        result.add("invalid_value", "custom_id must be a non-empty string.", number, "custom_id")
        return
    if custom_id in seen_ids:
        result.add(
            "duplicate_custom_id",
            f"The custom_id '{custom_id}' is used more than once; each request needs a unique custom_id.",
            number,
            "custom_id",
        )
        return
    seen_ids.add(custom_id)
    if request["method"] != "POST":
        result.add("invalid_method", f"The method must be 'POST', got {request['method']!r}.", number, "method")
        return
    if request["url"] != endpoint:
        result.add(
            "invalid_url",
            f"The url {request['url']!r} does not match the batch endpoint '{endpoint}'.",
            number,
            "url",
        )
        return
    body = request["body"]
    if not isinstance(body, dict):
        result.add("invalid_value", "body must be a JSON object.", number, "body")
        return
    model = body.get("model")
    if not model or not isinstance(model, str):
        result.add("invalid_request", "Missing required parameter: 'body.model'.", number, "body.model")
        return
    if body.get("stream"):
        result.add("streaming_unsupported", "Streaming is not supported in batches.", number, "body.stream")
        return
    required = REQUIRED_BODY_FIELD[endpoint]
    if required not in body:
        result.add(
            "missing_required_parameter", f"Missing required parameter: 'body.{required}'.", number, f"body.{required}"
        )
        return
    problem = model_lookup(model)
    if problem:
        code, message = problem
        result.add(code, message, number, "body.model")
        return
    if result.model and model != result.model:
        result.add(
            "mismatched_model",
            f"All requests in a batch must use the same model: line {number} names {model!r}, "
            f"earlier lines name {result.model!r}.",
            number,
            "body.model",
        )
        return
    result.model = model


def validate_input(stream, endpoint, model_lookup):
    """Checks every line of `stream` (an iterator of byte lines).

    `model_lookup(name)` returns None when the model may serve this endpoint, else
    (code, message)."""
    result = ValidationResult()
    seen_ids = set()
    max_requests = settings.VLLM_BATCH["MAX_BATCH_REQUESTS"]
    max_line = settings.VLLM_BATCH["MAX_LINE_BYTES"]
    cached = {}

    def lookup(name):
        if name not in cached:
            cached[name] = model_lookup(name)
        return cached[name]

    for number, raw in iter_request_lines(stream):
        result.total += 1
        if len(raw) > max_line:
            result.add("line_too_long", f"Line {number} is longer than {max_line} bytes.", number)
            continue
        _check_line(number, raw, endpoint, result, seen_ids, lookup)
    if result.total > max_requests:
        result.add(
            "too_many_requests",
            f"The batch has {result.total} requests; the limit is {max_requests} per batch.",
            None,
        )
    if result.total == 0:
        result.add("empty_file", "The input file has no requests.", None)
    return result
