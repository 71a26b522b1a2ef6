import sys

import pytest

from jobs.tests.factories import CHAT_MODEL, EMBEDDING_MODEL, make_user
from workers.models import RegisteredModel

from .fakes import EngineStub


@pytest.fixture(autouse=True)
def no_vllm():
    """These tests must never load the engine: it takes seconds and a GPU."""
    before = {"vllm", "workers.engine"} & set(sys.modules)
    yield
    assert {"vllm", "workers.engine"} & set(sys.modules) == before


@pytest.fixture(autouse=True)
def no_stop_request():
    from workers.lifecycle import stop_requested

    stop_requested.clear()
    yield
    stop_requested.clear()


@pytest.fixture
def user(db):
    return make_user("alice")


@pytest.fixture
def chat_model(db):
    return RegisteredModel.objects.create(name=CHAT_MODEL, path="/nonexistent", runner="generate")


@pytest.fixture
def embedding_model(db):
    return RegisteredModel.objects.create(name=EMBEDDING_MODEL, path="/nonexistent", runner="pooling")


@pytest.fixture
def small_chunks(settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "CHUNK_SIZE": 2}


@pytest.fixture
def engine(monkeypatch):
    stub = EngineStub()
    monkeypatch.setattr("workers.engine_host.engine_for", stub.engine_for)
    return stub
