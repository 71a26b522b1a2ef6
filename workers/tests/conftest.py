import sys

import pytest

# The same user and registered models as the jobs tests.
from jobs.tests.conftest import chat_model, embedding_model, user  # noqa: F401
from workers import state

from .fakes import EngineStub


@pytest.fixture(autouse=True)
def no_vllm():
    """These tests must never load the engine: it takes seconds and a GPU."""
    before = {"vllm", "workers.engine.vllm_engine"} & set(sys.modules)
    yield
    assert {"vllm", "workers.engine.vllm_engine"} & set(sys.modules) == before


@pytest.fixture(autouse=True)
def no_stop_request():
    state.stop_requested.clear()
    yield
    state.stop_requested.clear()


@pytest.fixture
def small_chunks(settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "CHUNK_SIZE": 2}


@pytest.fixture
def engine(monkeypatch):
    stub = EngineStub()
    monkeypatch.setattr("workers.engine.host.engine_for", stub.engine_for)
    return stub
