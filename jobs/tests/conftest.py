import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from workers.models import RegisteredModel

from .factories import CHAT_MODEL, EMBEDDING_MODEL, jsonl, make_client, make_user


@pytest.fixture
def user(db):
    return make_user("alice")


@pytest.fixture
def other_user(db):
    return make_user("mallory")


@pytest.fixture
def api(user):
    """An APIClient authenticated with a key of `user`."""
    return make_client(user)


@pytest.fixture
def other_api(other_user):
    """An APIClient authenticated with a key of another owner."""
    return make_client(other_user)


@pytest.fixture
def anon():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def chat_model(db):
    return RegisteredModel.objects.create(name=CHAT_MODEL, path="/nonexistent", runner="generate")


@pytest.fixture
def embedding_model(db):
    return RegisteredModel.objects.create(name=EMBEDDING_MODEL, path="/nonexistent", runner="pooling")


@pytest.fixture
def upload(api):
    """Uploads JSONL (lines or raw bytes) through POST /v1/files; returns the response."""

    def _upload(lines=None, data=None, filename="in.jsonl", purpose="batch", client=None):
        body = data if data is not None else jsonl(lines)
        return (client or api).post(
            "/v1/files",
            {"file": SimpleUploadedFile(filename, body), "purpose": purpose},
            format="multipart",
        )

    return _upload


@pytest.fixture
def create_batch(api):
    """Creates a batch through POST /v1/batches; returns the response."""

    def _create(input_file_id, endpoint="/v1/chat/completions", completion_window="24h", client=None, **extra):
        payload = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": completion_window}
        payload.update(extra)
        return (client or api).post("/v1/batches", payload, format="json")

    return _create
