"""Validation of a batch input file, line by line, as OpenAI's Batch API does it.

Every problem carries OpenAI's `code`, `message`, `param` and 1-based `line`.
"""

import json
import logging
from dataclasses import dataclass, field

from django.conf import settings

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 100
# OpenAI documents no number; this is BatchResult.custom_id's column, so a longer id
# would fail every save on PostgreSQL instead of failing validation.
MAX_CUSTOM_ID_CHARS = 512
MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# Roles whose message may leave out its content (a tool call instead).
ROLES_WITHOUT_CONTENT = ("assistant",)
READ_BLOCK = 1 << 20
# metadata.priority, an extension: metadata values are strings, the queue orders by the integer.
PRIORITIES = {"-1": -1, "0": 0, "1": 1}

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


def _read_lines(stream, max_line):
    """Yields the lines of `stream`; with `max_line`, a longer line is cut to its first
    max_line + 1 bytes and the rest skipped in blocks, so a file without newlines
    costs no more memory than that."""
    while True:
        raw = stream.readline() if max_line is None else stream.readline(max_line + 1)
        if not raw:
            return
        if max_line is not None and len(raw) > max_line and not raw.endswith(b"\n"):
            while True:
                rest = stream.readline(READ_BLOCK)
                if not rest or rest.endswith(b"\n"):
                    break
        yield raw


def iter_request_lines(stream, max_line=None):
    """Yields (line_number, raw_bytes) for the non-blank lines of a JSONL stream;
    with `max_line`, a line longer than that comes as its first max_line + 1 bytes."""
    for number, raw in enumerate(_read_lines(stream, max_line), start=1):
        if raw.strip():
            yield number, raw


def _content_problem(content, param):
    if isinstance(content, str):
        return None
    if isinstance(content, list):
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                return f"{param}.{i}", "A content part must be an object with a string 'type'."
        return None
    return param, "A message's content must be a string or a list of content parts."


def _messages_problem(messages):
    """(param, message) for the first entry OpenAI would refuse, else None. A
    `messages` that is no list, or an empty one, fails as that request's own error
    when it runs (workers.bodies), as other bad parameters do."""
    if not isinstance(messages, list):
        return None
    for i, entry in enumerate(messages):
        param = f"body.messages.{i}"
        if not isinstance(entry, dict):
            return param, f"{param} must be an object."
        role = entry.get("role")
        if role not in MESSAGE_ROLES:
            supported = ", ".join(f"'{name}'" for name in MESSAGE_ROLES)
            return f"{param}.role", f"Invalid value: {role!r}. Supported values are: {supported}."
        content = entry.get("content")
        if content is None and role in ROLES_WITHOUT_CONTENT:
            continue
        if "content" not in entry:
            return f"{param}.content", f"Missing required parameter: '{param}.content'."
        problem = _content_problem(content, f"{param}.content")
        if problem:
            return problem
    return None


def _check_line(number, raw, endpoint, result, seen_ids, model_lookup):
    try:
        request = json.loads(raw)
    except (ValueError, RecursionError) as exc:
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
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        result.add(
            "invalid_value",
            f"custom_id is {len(custom_id)} characters long; the limit is {MAX_CUSTOM_ID_CHARS}.",
            number,
            "custom_id",
        )
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
    if endpoint == "/v1/chat/completions":
        problem = _messages_problem(body["messages"])
        if problem:
            param, message = problem
            result.add("invalid_value", message, number, param)
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

    for number, raw in iter_request_lines(stream, max_line):
        result.total += 1
        if len(raw) > max_line:
            result.add("line_too_long", f"Line {number} is longer than {max_line} bytes.", number)
            continue
        try:
            _check_line(number, raw, endpoint, result, seen_ids, lookup)
        except Exception as exc:  # noqa: BLE001  a line never crashes the task, whatever it holds
            logger.warning("line %d raised while it was validated", number, exc_info=True)
            result.add("invalid_json_line", f"Line {number} could not be read: {type(exc).__name__}.", number)
    if result.total > max_requests:
        result.add(
            "too_many_requests",
            f"The batch has {result.total} requests; the limit is {max_requests} per batch.",
            None,
        )
    if result.total == 0:
        result.add("empty_file", "The input file has no requests.", None)
    return result


def metadata_priority_problem(metadata):
    """Why metadata.priority (an extension: "-1", "0" or "1") is refused, or None."""
    value = metadata.get("priority") if isinstance(metadata, dict) else None
    if value is None or value in PRIORITIES:
        return None
    return f"metadata.priority must be one of {', '.join(repr(p) for p in PRIORITIES)}, got {value!r}."
