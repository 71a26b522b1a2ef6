"""The one error envelope the API promises: OpenAI's {"error": {...}}."""

import logging
import math

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A domain error with the HTTP status, type, code and param OpenAI would send."""

    status_code = status.HTTP_400_BAD_REQUEST
    error_type = "invalid_request_error"

    def __init__(self, message, *, code=None, param=None, status_code=None, error_type=None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type

    def envelope(self):
        return error_envelope(self.message, self.error_type, self.param, self.code)


class NotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND

    def __init__(self, message, *, param=None):
        super().__init__(message, code=None, param=param)


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT


class TooLarge(ApiError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


class RateLimited(ApiError):
    """429 as OpenAI sends it, with Retry-After in seconds."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    error_type = "requests"

    def __init__(self, message, *, retry_after, code="rate_limit_exceeded", param=None):
        super().__init__(message, code=code, param=param)
        self.retry_after = max(1, math.ceil(retry_after))


def error_envelope(message, error_type="invalid_request_error", param=None, code=None):
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _first_message(detail):
    """Flattens DRF's nested validation detail into (param, message)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            param, message = _first_message(value)
            if key == "non_field_errors":
                return param, message
            return (f"{key}.{param}" if param else key), message
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return None, str(detail)


# DRF's field error codes, as OpenAI names them.
VALIDATION_CODES = {
    "required": "missing_required_parameter",
    "null": "missing_required_parameter",
    "blank": "missing_required_parameter",
    "invalid": "invalid_type",
    "not_a_dict": "invalid_type",
    "not_a_list": "invalid_type",
    "no_name": "invalid_value",
    "empty": "empty_file",
}


def openai_exception_handler(exc, context):
    if isinstance(exc, RequestDataTooBig):
        return Response(
            error_envelope(
                f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.",
                param=None,
                code="request_too_large",
            ),
            status=413,
        )
    if isinstance(exc, exceptions.Throttled):
        exc = RateLimited(
            "Rate limit reached for this API key: too many requests per second.",
            retry_after=exc.wait if exc.wait is not None else 1,
        )
    if isinstance(exc, RateLimited):
        return Response(exc.envelope(), status=exc.status_code, headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, ApiError):
        return Response(exc.envelope(), status=exc.status_code)
    if isinstance(exc, Http404):
        return Response(error_envelope(str(exc) or "Not found."), status=404)
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        message = str(exc.detail)
        return Response(
            error_envelope(message, "invalid_request_error", None, "invalid_api_key"),
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if isinstance(exc, exceptions.ValidationError):
        param, message = _first_message(exc.detail)
        _, first = _first_message(exc.get_codes())
        code = VALIDATION_CODES.get(first, "invalid_value")
        return Response(error_envelope(message, "invalid_request_error", param, code), status=400)
    if isinstance(exc, exceptions.ParseError):
        return Response(error_envelope(str(exc.detail), "invalid_request_error", None, "invalid_json"), status=400)
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return Response(
            error_envelope(str(exc.detail), "invalid_request_error", None, "unsupported_media_type"), status=415
        )
    if isinstance(exc, exceptions.APIException):
        return Response(
            error_envelope(str(exc.detail), "invalid_request_error", None, exc.default_code),
            status=exc.status_code,
        )
    return None


def json_404(request, exception=None):
    return JsonResponse(error_envelope(f"Unknown path: {request.path}", code="unknown_url"), status=404)


def json_400(request, exception=None):
    return JsonResponse(error_envelope("Bad request.", code="bad_request"), status=400)


def json_500(request):
    return JsonResponse(error_envelope("The server had an error processing your request.", "server_error"), status=500)
