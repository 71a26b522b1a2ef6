"""The registered models as OpenAI lists them: /v1/models and /v1/models/{name}; and
/v1/queue (an extension: it needs the workers, which jobs may not import)."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from batchsite.errors import NotFound
from jobs import selectors as jobs_selectors
from jobs.serializers import QueueSerializer

from . import selectors


class ModelObjectSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The name requests put in `model`.")
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField(help_text="Always 'list'.")
    data = ModelObjectSerializer(many=True)


class ModelsView(APIView):
    @extend_schema(responses=ModelListSerializer, operation_id="models_list")
    def get(self, request):
        models = selectors.model_list_active()
        return Response({"object": "list", "data": [m.to_openai() for m in models]})


class ModelDetailView(APIView):
    @extend_schema(responses=ModelObjectSerializer, operation_id="models_retrieve")
    def get(self, request, model_id):
        model = selectors.model_get_active(model_id)
        if model is None:
            raise NotFound(f"The model '{model_id}' does not exist.", param="model")
        return Response(model.to_openai())


class QueueView(APIView):
    """Extension: workers online, what runs and what waits (the caller's batches)."""

    @extend_schema(responses=QueueSerializer, operation_id="queue_retrieve")
    def get(self, request):
        workers = len(selectors.worker_list_online())
        return Response(jobs_selectors.batch_queue(owner=request.user, workers_online=workers))
