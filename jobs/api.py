"""The OpenAI Files and Batches API. Views parse, call a service, and serialize."""

from django.conf import settings
from django.http import FileResponse
from django.utils.http import content_disposition_header
from drf_spectacular.utils import extend_schema
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from batchsite.errors import ApiError

from . import selectors, services
from .serializers import (
    BatchCreateSerializer,
    BatchListQuerySerializer,
    BatchListSerializer,
    BatchObjectSerializer,
    DeletedFileSerializer,
    FileListQuerySerializer,
    FileListSerializer,
    FileObjectSerializer,
    FileUploadSerializer,
    StatsSerializer,
)

# Room for the multipart envelope around the file itself.
MULTIPART_OVERHEAD = 64 * 1024


def _valid(serializer_class, data):
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class FilesView(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(parameters=[FileListQuerySerializer], responses=FileListSerializer, operation_id="files_list")
    def get(self, request):
        query = _valid(FileListQuerySerializer, request.query_params)
        return Response(selectors.file_list(owner=request.user, **query))

    @extend_schema(request={"multipart/form-data": FileUploadSerializer}, responses=FileObjectSerializer)
    def post(self, request):
        max_bytes = settings.VLLM_BATCH["MAX_UPLOAD_BYTES"]
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0  # as Django reads it; the multipart parser then refuses the body
        if declared > max_bytes + MULTIPART_OVERHEAD:
            # Refuse before the body is read to disk.
            raise ApiError(
                f"File is too large: the request has {declared} bytes, the limit is {max_bytes} bytes.",
                code="file_too_large",
                param="file",
            )
        data = _valid(FileUploadSerializer, request.data)
        file = services.file_create(
            owner=request.user,
            upload=data["file"],
            purpose=data["purpose"],
            expires_after_seconds=data.get("expires_after[seconds]"),
        )
        return Response(file.to_openai())


class FileDetailView(APIView):
    @extend_schema(responses=FileObjectSerializer)
    def get(self, request, file_id):
        return Response(selectors.file_get(owner=request.user, file_id=file_id).to_openai())

    # OpenAI answers a delete with 200 and the deleted object, not drf-spectacular's default 204.
    @extend_schema(responses={200: DeletedFileSerializer})
    def delete(self, request, file_id):
        file = selectors.file_get(owner=request.user, file_id=file_id)
        services.file_delete(file=file)
        return Response({"id": file_id, "object": "file", "deleted": True})


class FileContentView(APIView):
    def perform_content_negotiation(self, request, force=False):
        # The openai SDK asks for application/binary; errors still go out as JSON.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request, file_id):
        file = selectors.file_get(owner=request.user, file_id=file_id)
        response = FileResponse(services.file_open(file), content_type="application/octet-stream")
        response["Content-Length"] = str(file.bytes)
        # Quotes and non-Latin-1 names need RFC 6266 escaping, or the header is malformed.
        response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=file.filename)
        return response


class BatchesView(APIView):
    parser_classes = [JSONParser]

    @extend_schema(parameters=[BatchListQuerySerializer], responses=BatchListSerializer, operation_id="batches_list")
    def get(self, request):
        query = _valid(BatchListQuerySerializer, request.query_params)
        return Response(selectors.batch_list(owner=request.user, **query))

    @extend_schema(request=BatchCreateSerializer, responses=BatchObjectSerializer)
    def post(self, request):
        data = _valid(BatchCreateSerializer, request.data)
        input_file = selectors.file_get(owner=request.user, file_id=data["input_file_id"])
        batch = services.batch_create(
            owner=request.user,
            input_file=input_file,
            endpoint=data["endpoint"],
            completion_window=data["completion_window"],
            metadata=data.get("metadata"),
        )
        selectors.batch_estimates_attach([batch])
        return Response(batch.to_openai())


class BatchDetailView(APIView):
    @extend_schema(responses=BatchObjectSerializer)
    def get(self, request, batch_id):
        return Response(selectors.batch_get(owner=request.user, batch_id=batch_id).to_openai())


class BatchCancelView(APIView):
    @extend_schema(request=None, responses=BatchObjectSerializer)
    def post(self, request, batch_id):
        batch = selectors.batch_get(owner=request.user, batch_id=batch_id)
        return Response(services.batch_cancel(batch=batch).to_openai())


class StatsView(APIView):
    """Extension: the caller's batches in figures."""

    @extend_schema(responses=StatsSerializer, operation_id="stats_retrieve")
    def get(self, request):
        return Response(selectors.batch_stats(owner=request.user))
