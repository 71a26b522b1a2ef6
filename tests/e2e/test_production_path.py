"""The production path on this machine: PostgreSQL and the Redis broker, with the
same cluster and engine as the embedded default and gunicorn as `make serve` runs
it (deploy/gunicorn.conf.py, `-w 4 --threads 16`)."""

import json
import uuid

import openai
import psycopg
import pytest
import redis

from bench.load_bench import OWNERS, batch_state, cancel_all, create_keys, run_load, submit_batches, wait_running
from devtools.devstack import Stack

from .conftest import chat_request, read_lines, submit, wait_finished, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_DB = 7


@pytest.fixture(scope="module")
def production_stack(tmp_path_factory, tiny_model_path):
    name = f"vllm_batch_e2e_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    redis_url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    stack = Stack(
        tmp_path_factory.mktemp("e2e-production"),
        env={
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
            "REDIS_URL": redis_url,
            "Q_CLUSTER_NAME": name,
            "VLLM_BATCH_CHUNK_SIZE": "16",
            "VLLM_BATCH_STALE_BATCH_SECONDS": "20",
            "VLLM_BATCH_CPU_KVCACHE_GIB": "1",
        },
    )
    try:
        stack.setup(tiny_path=tiny_model_path)
        stack.api_key = stack.create_api_key("production")
        stack.db_name = name
        stack.start_web(workers=4, threads=16)
        stack.start_worker()
        yield stack
    finally:
        stack.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_batches_run_on_postgresql_and_redis(production_stack):
    client = openai.OpenAI(base_url=production_stack.base_url, api_key=production_stack.api_key, max_retries=0)
    requests = [chat_request(f"pg-{i}", f"postgres {i}", max_tokens=16, temperature=0) for i in range(200)]
    batch = wait_finished(client, submit(client, requests).id, timeout=400)

    assert batch.status == "completed"
    assert batch.request_counts.completed == 200
    assert sorted(o["custom_id"] for o in read_lines(client, batch.output_file_id)) == sorted(
        f"pg-{i}" for i in range(200)
    )
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{production_stack.db_name}") as conn:
        status, completed = conn.execute(
            "SELECT status, completed_requests FROM jobs_batch WHERE id = %s", [batch.id]
        ).fetchone()
        queued_in_orm = conn.execute("SELECT count(*) FROM django_q_ormq").fetchone()[0]
    assert (status, completed) == ("completed", 200)
    assert queued_in_orm == 0, "tasks must travel through Redis, not the ORM broker"


def test_kill_9_and_restart_on_the_production_path(production_stack):
    client = openai.OpenAI(base_url=production_stack.base_url, api_key=production_stack.api_key, max_retries=0)
    n = 2000
    requests = [chat_request(f"k{i}", f"kill {i}", max_tokens=64, temperature=0, ignore_eos=True) for i in range(n)]
    batch = submit(client, requests)
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 32, timeout=300)

    production_stack.kill_worker()
    production_stack.start_worker()
    batch = wait_finished(client, batch.id, timeout=400)

    assert batch.status == "completed"
    ids = [o["custom_id"] for o in read_lines(client, batch.output_file_id)]
    assert sorted(ids) == sorted(f"k{i}" for i in range(n))


def test_api_under_load_while_a_batch_runs(production_stack):
    """50 clients of 10 owners, each on its own keep-alive connection, poll their batch,
    list files and batches and upload small files for 40 s while a 2000-request batch
    runs: every request answered (no connection error, no status >= 400)."""
    base_url = production_stack.base_url
    keys = create_keys(production_stack, OWNERS)
    batch_ids = submit_batches(base_url, keys, 2000)
    before = wait_running(base_url, keys[0], batch_ids[0])["request_counts"]["completed"]

    result = run_load(base_url, keys, batch_ids, clients=50, seconds=40)

    during = batch_state(base_url, keys[0], batch_ids[0])
    cancel_all(base_url, keys, batch_ids)
    (production_stack.var_dir / "load.json").write_text(json.dumps(result, indent=1))
    print(f"load: {json.dumps(result)}")
    assert result["errors"] == 0, result["error_samples"]
    assert result["requests"] >= 500, result
    assert during["request_counts"]["completed"] > before or during["status"] == "completed", during
