"""The Label Studio loop's API: the webhook receiver and ground truth. Views
parse, call a service, and serialize."""

import hmac

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from batchsite.errors import ApiError, NotFound, TooLarge

from . import events, selectors, store
from .models import WebhookEvent
from .serializers import (
    AnnotationSerializer,
    GroundTruthChangeSerializer,
    GroundTruthListQuerySerializer,
    GroundTruthListSerializer,
    WebhookReceivedSerializer,
)


class WebhookUnauthorized(ApiError):
    status_code = 401


def _valid(serializer_class, data):
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _check_secret(request):
    secrets = settings.LABEL_STUDIO_WEBHOOK_SECRETS
    header = settings.LABEL_STUDIO_WEBHOOK_HEADER
    if not secrets:
        raise WebhookUnauthorized(
            "Label Studio webhooks are not configured on this server: set LABEL_STUDIO_WEBHOOK_SECRETS.",
            code="webhook_not_configured",
        )
    given = request.headers.get(header, "").encode()
    # Every secret is compared, so the time taken does not tell which one nearly matched.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given, secret.encode())
    if not matched:
        raise WebhookUnauthorized(
            f"Missing or wrong {header} header.", code="invalid_webhook_secret", param=header.lower()
        )


class LabelStudioWebhookView(APIView):
    """Label Studio's webhook deliveries. Authenticated by the secret header Label
    Studio sends (set in the webhook's headers), not by an API key. The event is
    stored as received and processed in the background."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses=WebhookReceivedSerializer,
        auth=[],
        operation_id="label_studio_webhook",
        description='A Label Studio webhook delivery ({"action": ..., ...}). Needs the header named by '
        "LABEL_STUDIO_WEBHOOK_HEADER (default X-Webhook-Secret) holding one of LABEL_STUDIO_WEBHOOK_SECRETS.",
    )
    def post(self, request):
        _check_secret(request)
        limit = settings.LABEL_STUDIO_WEBHOOK_MAX_BYTES
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            # Refused before the body is read.
            raise TooLarge(f"The event body is larger than {limit} bytes.", code="request_too_large")
        event = events.event_receive(body=request.body, source=WebhookEvent.Source.WEBHOOK)
        return Response({"status": "received", "event_id": event.pk})


def _project(project_id):
    project = selectors.project_for_ls_id(project_id)
    if project is None:
        raise NotFound(f"No labeling project for Label Studio project {project_id}.", param="project_id")
    return project


def _list(project, annotations, has_more=False):
    return {
        "object": "list",
        "project": project.ls_project_id,
        "ground_truth_revision": project.ground_truth_revision,
        "data": AnnotationSerializer(annotations, many=True).data,
        "has_more": has_more,
    }


PROJECT_ID = OpenApiParameter("project_id", int, OpenApiParameter.PATH, description="Label Studio's project id.")


class GroundTruthView(APIView):
    """A project's ground-truth annotations: list, mark, unmark."""

    @extend_schema(
        parameters=[PROJECT_ID, GroundTruthListQuerySerializer],
        responses=GroundTruthListSerializer,
        operation_id="labeling_ground_truth_list",
    )
    def get(self, request, project_id):
        project = _project(project_id)
        query = _valid(GroundTruthListQuerySerializer, request.query_params)
        annotations = selectors.ground_truth_annotations(project=project, include_invalid=True).order_by(
            "ls_annotation_id"
        )
        if "after" in query:
            annotations = annotations.filter(ls_annotation_id__gt=query["after"])
        page = list(annotations[: query["limit"] + 1])
        return Response(_list(project, page[: query["limit"]], has_more=len(page) > query["limit"]))

    @extend_schema(
        parameters=[PROJECT_ID],
        request=GroundTruthChangeSerializer,
        responses=GroundTruthListSerializer,
        operation_id="labeling_ground_truth_mark",
    )
    def post(self, request, project_id):
        return self._change(request, project_id, True)

    @extend_schema(
        parameters=[PROJECT_ID],
        request=GroundTruthChangeSerializer,
        responses={200: GroundTruthListSerializer},
        operation_id="labeling_ground_truth_unmark",
    )
    def delete(self, request, project_id):
        return self._change(request, project_id, False)

    def _change(self, request, project_id, value):
        project = _project(project_id)
        if not isinstance(request.data, dict):
            raise ApiError("The request body must be a JSON object.", code="invalid_type")
        data = _valid(GroundTruthChangeSerializer, request.data)
        annotations = store.ground_truth_set(
            project=project, value=value, annotation_ids=data.get("annotations", []), task_ids=data.get("tasks", [])
        )
        project.refresh_from_db(fields=["ground_truth_revision"])
        return Response(_list(project, annotations))
