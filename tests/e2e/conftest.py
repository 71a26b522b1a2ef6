"""Helpers for the end-to-end tests; the stack itself is in tests/conftest.py."""

import json
import time

FINISHED = {"completed", "failed", "cancelled", "expired"}


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
