"""The endpoints Label Studio calls on an ML backend (its "Model URL" is
http://host:8000/labelstudio), with Label Studio's JSON bodies.

Errors are {"error": message, "code": ...}: Label Studio shows the body of a
failed call next to the HTTP error.
"""

import base64
import binascii
import functools
import hmac
import json
import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from batchsite.errors import ApiError

from . import events, selectors, services
from .label_config import LabelConfigError
from .models import WebhookEvent

logger = logging.getLogger(__name__)

MODEL_CLASS = "vllm-batch"
TRAINING_MESSAGE = (
    "vllm-batch does not train on annotations: predictions come from the served LLM and its prompt "
    "templates (edit them in the vllm-batch admin). Nothing was started."
)


EXPORT_MESSAGE = (
    "vllm-batch exports the project's ground truth and accepted annotations as a fine-tuning file "
    "(vllm-batch admin: Labeling > Training runs); the served model itself is not changed."
)


def error(message, status, code=None):
    return JsonResponse({"error": message, "code": code}, status=status)


def _authorized(request):
    username, password = settings.LABEL_STUDIO_BACKEND_USERNAME, settings.LABEL_STUDIO_BACKEND_PASSWORD
    if not username and not password:
        return True
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given_user, _, given_password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Both compared, always, so the time does not tell which one was wrong.
    user_ok = hmac.compare_digest(given_user.encode(), username.encode())
    password_ok = hmac.compare_digest(given_password.encode(), password.encode())
    return user_ok and password_ok


def endpoint(*methods):
    """CSRF exempt, the allowed methods, basic auth when configured, and JSON
    errors for bad input instead of Django's HTML pages."""

    def decorate(view):
        @csrf_exempt
        @require_http_methods(list(methods))
        @functools.wraps(view)
        def wrapped(request):
            if not _authorized(request):
                response = error("Authentication required.", 401, "unauthorized")
                response["WWW-Authenticate"] = 'Basic realm="vllm-batch Label Studio backend"'
                return response
            try:
                return view(request)
            except RequestDataTooBig:
                return error(
                    f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.",
                    413,
                    "request_too_large",
                )
            except LabelConfigError as exc:
                return error(str(exc), 400, "invalid_label_config")
            except ApiError as exc:
                if exc.status_code >= 500:
                    logger.warning("Label Studio %s: %s (%s)", request.path, exc.message, exc.code)
                return error(exc.message, exc.status_code, exc.code)

        return wrapped

    return decorate


def json_body(request):
    """The request's JSON object; ApiError 400 when it is not one."""
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.", code="invalid_type")
    return body


def _string(body, name):
    value = body.get(name)
    if not isinstance(value, str):
        raise ApiError(f"'{name}' must be a string.", param=name, code="invalid_type")
    return value


def _optional_string(body, name):
    value = body.get(name)
    return value if isinstance(value, str) else None


@endpoint("GET")
def health(request):
    return JsonResponse({"status": "UP", "model_class": MODEL_CLASS})


@endpoint("POST")
def setup(request):
    body = json_body(request)
    project = services.project_sync(
        project_key=body.get("project"),
        label_config=_string(body, "schema"),
        hostname=_optional_string(body, "hostname"),
        access_token=_optional_string(body, "access_token"),
    )
    return JsonResponse({"model_version": project.model_version})


@endpoint("GET")
def versions(request):
    return JsonResponse({"versions": selectors.model_versions(), "message": ""})


@endpoint("POST")
def predict(request):
    body = json_body(request)
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ApiError("'tasks' must be a list of task objects.", param="tasks", code="invalid_type")
    project = services.project_sync(project_key=body.get("project"), label_config=_string(body, "label_config"))
    results = services.predict_tasks(project=project, tasks=tasks)
    return JsonResponse({"results": results, "model_version": project.model_version})


@endpoint("POST")
def webhook(request):
    """Events of the project's auto-registered webhook: stored and processed as
    /v1/webhooks/label-studio's are (this one is protected by the backend's basic auth)."""
    event = events.event_receive(body=request.body, source=WebhookEvent.Source.BACKEND)
    if event.action == "START_TRAINING":
        return JsonResponse({"status": "ok", "message": EXPORT_MESSAGE, "event_id": event.pk})
    return JsonResponse({"status": "ok", "event_id": event.pk})


@endpoint("POST")
def train(request):
    body = json_body(request)
    logger.info("Label Studio training request for project %s", body.get("project"))
    return JsonResponse({"status": "ok", "message": TRAINING_MESSAGE})
