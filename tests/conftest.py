"""One real stack per test run: gunicorn, the django-q2 cluster and the vLLM engine,
driven through the official openai SDK as a user would (tests/e2e) and through a
real browser (tests/browser)."""

import os
from pathlib import Path

import openai
import pytest

from devtools.devstack import Stack
from devtools.tiny_model import build_tiny_model

# Small chunks and a short lease make cancel, resume and takeover observable
# in seconds; the logic is the same at the defaults.
E2E_ENV = {
    "VLLM_BATCH_CHUNK_SIZE": "16",
    "VLLM_BATCH_STALE_BATCH_SECONDS": "20",
    "Q_POLL": "0.2",
    "VLLM_BATCH_CPU_KVCACHE_GIB": "1",
    "VLLM_BATCH_HEARTBEAT_SECONDS": "2",
    "VLLM_BATCH_REALTIME_SWAP_HOLD_SECONDS": "10",
    # Two secrets, as during a rotation; tests/labelstudio/test_loop.py registers webhooks with them.
    "LABEL_STUDIO_WEBHOOK_SECRETS": "e2e-old-webhook-secret,e2e-webhook-secret",
}


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    path = Path(os.environ.get("VLLM_BATCH_TEST_MODEL_DIR") or tmp_path_factory.mktemp("models")) / "tiny-llama"
    if not (path / "config.json").exists():
        build_tiny_model(path)
    return path


@pytest.fixture(scope="session")
def stack(tmp_path_factory, tiny_model_path):
    stack = Stack(tmp_path_factory.mktemp("e2e-var"), env=E2E_ENV)
    stack.setup(tiny_path=tiny_model_path)
    stack.api_key = stack.create_api_key("e2e")
    stack.other_key = stack.create_api_key("e2e-other")
    stack.start_web()
    stack.start_worker()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def client(stack):
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def other_client(stack):
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.other_key, max_retries=0, timeout=60)
