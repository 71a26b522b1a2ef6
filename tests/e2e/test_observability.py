"""Health, readiness, metrics, queue and stats against the real stack: the metrics
equal a real batch's counts and tokens, and a worker restart sets no counter back."""

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import chat_request, submit, wait_finished

pytestmark = pytest.mark.e2e

COUNTERS = (
    "vllm_batch_requests_completed_total",
    "vllm_batch_requests_failed_total",
    "vllm_batch_input_tokens_total",
    "vllm_batch_output_tokens_total",
)


def root(stack):
    return stack.base_url.removesuffix("/v1")


def scrape(stack):
    response = httpx.get(f"{root(stack)}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def counters(samples):
    return {name: samples.get((name, (("model", "tiny-llama"),)), 0.0) for name in COUNTERS}


def wait_ready(stack, timeout=240):
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{root(stack)}/ready", timeout=30)
        if response.status_code == 200:
            return response.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {timeout} s: {response.json()}")
        time.sleep(0.5)


def test_health_ready_metrics_queue_stats_and_a_restart(stack, client):
    assert httpx.get(f"{root(stack)}/health", timeout=10).json() == {"status": "ok"}
    assert wait_ready(stack)["checks"] == {"database": "ok", "storage": "ok", "broker": "ok", "worker": "ok"}

    before = counters(scrape(stack))
    requests = [chat_request(f"m-{i}", f"count to {i}", max_tokens=8, temperature=0) for i in range(12)]
    requests.append(chat_request("too-long", "hello " * 5000, max_tokens=5))
    batch = wait_finished(client, submit(client, requests).id)
    assert batch.status == "completed"

    after = counters(scrape(stack))
    assert after["vllm_batch_requests_completed_total"] - before["vllm_batch_requests_completed_total"] == 12
    assert after["vllm_batch_requests_failed_total"] - before["vllm_batch_requests_failed_total"] == 1
    assert after["vllm_batch_input_tokens_total"] - before["vllm_batch_input_tokens_total"] == batch.usage.input_tokens
    assert (
        after["vllm_batch_output_tokens_total"] - before["vllm_batch_output_tokens_total"] == batch.usage.output_tokens
    )

    headers = {"Authorization": f"Bearer {stack.api_key}"}
    stats = httpx.get(f"{stack.base_url}/stats", headers=headers, timeout=30).json()
    assert stats["by_status"]["completed"] >= 1
    mine = {row["model"]: row for row in stats["by_model"]}["tiny-llama"]
    assert mine["requests_completed"] >= 12
    queue = httpx.get(f"{stack.base_url}/queue", headers=headers, timeout=30).json()
    assert queue["workers_online"] >= 1
    assert all(q["id"] != batch.id for q in queue["queued"])

    stack.stop_worker(timeout=120)
    stack.start_worker()
    wait_ready(stack)
    restarted = scrape(stack)
    assert counters(restarted) == after
    stopped = [labels for (name, labels), v in restarted.items() if name == "vllm_batch_worker_state" and v == 1]
    assert any(("state", "stopped") in labels for labels in stopped), stopped


def test_realtime_latency_and_model_load_time(stack, client):
    """Every gunicorn process's realtime requests count in /metrics (multiprocess mode),
    and the worker that loaded the model reports how long that took."""
    batch = submit(client, [chat_request("warm", "hi", max_tokens=2)])
    assert wait_finished(client, batch.id).status == "completed"
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    deadline = time.monotonic() + 60
    while httpx.post(f"{stack.base_url}/inference", json={"prompt": "hi", "max_tokens": 1}, headers=headers).is_error:
        assert time.monotonic() < deadline, "no worker announced tiny-llama for realtime"
        time.sleep(0.5)

    count = ("vllm_batch_realtime_request_seconds_count", (("endpoint", "/v1/chat/completions"), ("status", "200")))
    seconds = ("vllm_batch_realtime_request_seconds_sum", count[1])
    earlier = scrape(stack)
    for i in range(4):
        client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": f"count to {i}"}], max_tokens=4
        )
    samples = scrape(stack)
    assert samples[count] == earlier.get(count, 0.0) + 4
    assert 0 < samples[seconds] - earlier.get(seconds, 0.0) < 4 * 60

    loads = {labels: v for (name, labels), v in samples.items() if name == "vllm_batch_worker_model_load_seconds"}
    assert any(dict(labels)["model"] == "tiny-llama" and 0 < v < 600 for labels, v in loads.items()), loads
