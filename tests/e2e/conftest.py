"""One real stack per test run: gunicorn, the django-q2 cluster and the vLLM engine,
driven through the official openai SDK as a user would."""

import json
import os
import time
from pathlib import Path

import openai
import pytest

from batchsite.devstack import Stack

# Small chunks and a short lease make cancel, resume and takeover observable
# in seconds; the logic is the same at the defaults.
E2E_ENV = {
    "VLLM_BATCH_CHUNK_SIZE": "16",
    "VLLM_BATCH_STALE_BATCH_SECONDS": "20",
    "Q_POLL": "0.2",
    "VLLM_BATCH_CPU_KVCACHE_GIB": "1",
}

FINISHED = {"completed", "failed", "cancelled", "expired"}


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from workers.tiny_model import build_tiny_model

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


def jsonl(requests):
    return ("\n".join(json.dumps(r) for r in requests) + "\n").encode()


def chat_request(custom_id, content, **body):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "tiny-llama", "messages": [{"role": "user", "content": content}], **body},
    }


def submit(client, requests, endpoint="/v1/chat/completions", metadata=None):
    file = client.files.create(file=("input.jsonl", jsonl(requests)), purpose="batch")
    return client.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h", metadata=metadata)


def wait_for(client, batch_id, predicate, timeout=300, interval=0.3):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if predicate(batch):
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} {batch.request_counts} after {timeout} s")
        time.sleep(interval)


def wait_finished(client, batch_id, timeout=300):
    return wait_for(client, batch_id, lambda b: b.status in FINISHED, timeout)


def read_lines(client, file_id):
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]
