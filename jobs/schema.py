"""What drf-spectacular needs beyond the views: the API key's description and
the error responses every operation can give, in OpenAI's envelope."""

import threading

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularJSONAPIView

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "example": "invalid_request_error"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
        }
    },
}

ERROR_DESCRIPTIONS = {
    "400": "The request is invalid: see `error.param` and `error.code`.",
    "401": "No API key, or an unknown one (`invalid_api_key`).",
    "404": "No such object for this key's owner.",
    "409": "The object's state does not allow this (e.g. a file that feeds a running batch).",
    "413": "The upload or body is larger than the server accepts, or the owner's storage quota "
    "(`storage_quota_exceeded`).",
    "415": "The body's content type is not accepted.",
    "429": "Too many requests for this API key (`rate_limit_exceeded`), too many unfinished batches "
    "(`open_batches_limit`) or realtime requests at once (`concurrent_requests_limit`); see `Retry-After`.",
    "502": "The worker failed during the request (`engine_error`).",
    "503": "No online worker holds the model (`model_not_loaded`); see `Retry-After`.",
    "504": "The worker did not answer within the request's timeout (`timeout`); the request is aborted.",
}

REALTIME_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/inference"}


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "jobs.auth.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from `manage.py create_api_key`, as `Authorization: Bearer <key>`.",
        }


def _error_statuses(path, method):
    # Every operation is throttled per API key.
    statuses = {"400", "401", "429"}
    # An unknown id in the path, an unknown `after` on a list, an unknown file or model in a body.
    if "{" in path or path in ("/v1/files", "/v1/batches") or path in REALTIME_PATHS:
        statuses.add("404")
    if method == "post" and path in ("/v1/files", "/v1/batches"):
        statuses |= {"413", "415"}
    if (method, path) in (("delete", "/v1/files/{file_id}"), ("post", "/v1/batches/{batch_id}/cancel")):
        statuses.add("409")
    if path in REALTIME_PATHS:
        statuses |= {"415", "502", "503", "504"}
    return statuses


def add_error_responses(result, generator, request, public):
    """Postprocessing hook: documents the error envelope for each operation's error statuses."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/Error"}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in sorted(_error_statuses(path, method)):
                responses.setdefault(
                    status,
                    {"description": ERROR_DESCRIPTIONS[status], "content": {"application/json": {"schema": reference}}},
                )
    return result


class SchemaView(SpectacularJSONAPIView):
    """drf-spectacular imports its extensions' targets on the first schema request of a
    process, and not thread-safely: two first requests at once (gunicorn's threads, seen
    under load) made one a 500 and could switch an extension off for the process's life."""

    _lock = threading.Lock()

    @extend_schema(exclude=True)
    def get(self, request, *args, **kwargs):
        with self._lock:
            return super().get(request, *args, **kwargs)
