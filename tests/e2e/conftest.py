"""Helpers for the end-to-end tests; the stack itself is in tests/conftest.py."""

import json
import time
import uuid
from contextlib import contextmanager

import psycopg
import redis

from tests.conftest import E2E_ENV

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


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def production_env(prefix, redis_db):
    """The stack's environment on a PostgreSQL database of its own (dropped after)
    and an emptied Redis database, as worker nodes of one install share them."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    redis_url = f"redis://127.0.0.1:6379/{redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    try:
        yield {
            **E2E_ENV,
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
            "REDIS_URL": redis_url,
            "Q_CLUSTER_NAME": name,
        }
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query(env, sql, *params):
    """Rows of a query on the stack's PostgreSQL database."""
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        return conn.execute(sql, params).fetchall()


def requests_for(model, prefix, n, max_tokens=8):
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"{prefix} {i}"}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            },
        }
        for i in range(n)
    ]


def assert_exactly_once(client, batch, requests):
    """Completed, every request once in the output (in input order), no errors,
    counts and usage those of the requests."""
    assert batch.status == "completed", batch
    output = read_lines(client, batch.output_file_id)
    errors = read_lines(client, batch.error_file_id) if batch.error_file_id else []
    assert errors == []
    assert [line["custom_id"] for line in output] == [r["custom_id"] for r in requests]
    assert (batch.request_counts.completed, batch.request_counts.failed) == (len(requests), 0)
    assert batch.usage.output_tokens == sum(r["body"]["max_tokens"] for r in requests)
    assert batch.usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
