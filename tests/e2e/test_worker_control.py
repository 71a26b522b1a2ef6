"""`manage.py worker ...` against the running cluster and the real engine."""

import json
import os
import subprocess
import time

import psutil
import pytest

from devtools.devstack import PROJECT_DIR, PYTHON

from .conftest import chat_request, submit, wait_finished, wait_for

pytestmark = pytest.mark.e2e


def worker_cli(stack, *args, timeout=240):
    return subprocess.run(
        [PYTHON, "manage.py", "worker", *args],
        cwd=PROJECT_DIR,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status(stack):
    result = worker_cli(stack, "status", "--json", "--api-url", stack.base_url)
    return result.returncode, json.loads(result.stdout)


def online_worker(stack, timeout=120, where=lambda w: True):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, report = status(stack)
        found = [w for w in report["workers"] if w["freshness"] == "online" and where(w)]
        if found:
            return found[0]
        time.sleep(1)
    raise AssertionError(f"no online worker matching within {timeout} s: {report}")


def warm_up(client):
    batch = submit(client, [chat_request("warm", "hello", max_tokens=2)])
    assert wait_finished(client, batch.id, timeout=300).status == "completed"


def test_status_reports_an_idle_worker_and_the_api(stack, client):
    warm_up(client)
    worker = online_worker(stack, where=lambda w: w["state"] == "idle" and w["model"] == "tiny-llama")
    code, report = status(stack)
    assert code == 0
    assert report["api"]["answers"] is True
    assert worker["pid"] in {p.pid for p in stack.worker_processes()}
    assert worker["memory_kind"] == "host" and worker["memory_used"] > 100 * 2**20
    text = worker_cli(stack, "status", "--api-url", stack.base_url).stdout
    assert worker["name"] in text and "online" in text and "tiny-llama" in text


def test_heartbeat_arrives_during_a_long_batch(stack, client):
    warm_up(client)
    # 256 tokens each keeps the tiny model busy for well over the three heartbeat intervals checked.
    requests = [chat_request(f"hb{i}", f"beat {i}", max_tokens=256, ignore_eos=True) for i in range(2000)]
    batch = submit(client, requests)
    wait_for(client, batch.id, lambda b: b.status == "in_progress", timeout=120, interval=0.2)
    heartbeats = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(heartbeats) < 4:
        _, report = status(stack)
        busy = [w for w in report["workers"] if w["state"] == "processing" and w["batch"] == batch.id]
        if busy:
            assert busy[0]["freshness"] == "online"
            heartbeats.add(busy[0]["last_seen"])
        if client.batches.retrieve(batch.id).status != "in_progress":
            break
    client.batches.cancel(batch.id)
    assert wait_finished(client, batch.id, timeout=300).status == "cancelled"
    # Four different heartbeats seen while the worker was processing this batch, fresh each time.
    assert len(heartbeats) >= 4, heartbeats


def test_clear_gpu_unloads_the_model_and_keeps_the_worker(stack, client):
    warm_up(client)
    before = online_worker(stack, where=lambda w: w["model"] == "tiny-llama")
    engine_pids = [
        p.pid for p in psutil.Process(before["pid"]).children(recursive=True) if "VLLM" in " ".join(p.cmdline())
    ]
    assert engine_pids, "the engine runs in child processes (VLLM::EngineCore)"
    # Under SCHED_IDLE (VLLM_BATCH_ENGINE_CPU_POLICY's default), every thread; the worker itself is not.
    engine_threads = [t.id for pid in engine_pids for t in psutil.Process(pid).threads()]
    assert {os.sched_getscheduler(tid) for tid in engine_threads} == {os.SCHED_IDLE}
    assert os.sched_getscheduler(before["pid"]) == os.SCHED_OTHER

    result = worker_cli(stack, "clear-gpu", "--worker", str(before["id"]), "--wait")

    assert result.returncode == 0, result.stderr
    assert "unloaded tiny-llama" in result.stdout
    assert not [pid for pid in engine_pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    after = online_worker(stack, where=lambda w: w["pid"] == before["pid"] and w["model"] is None)
    assert after["memory_used"] < before["memory_used"] - 200 * 2**20


def test_restart_gives_a_new_pid_with_the_model_reloaded(stack, client):
    warm_up(client)
    before = online_worker(stack, where=lambda w: w["model"] == "tiny-llama")

    result = worker_cli(stack, "restart", "--worker", before["name"], "--wait")

    assert result.returncode == 0, result.stderr
    assert "restarting" in result.stdout
    states = set()

    def reloaded(w):
        if w["pid"] != before["pid"]:
            states.add(w["state"])
        return w["pid"] != before["pid"] and w["model"] == "tiny-llama" and w["state"] == "idle"

    after = online_worker(stack, timeout=180, where=reloaded)
    assert "loading" in states, f"the new worker was never seen loading its model: {states}"
    assert not psutil.pid_exists(before["pid"]) or psutil.Process(before["pid"]).status() == "zombie"
    assert after["state"] == "idle"


def test_kill_ends_the_worker_process(stack):
    before = online_worker(stack)
    refused = worker_cli(stack, "kill", "--worker", before["name"])
    assert refused.returncode != 0 and "--yes" in refused.stderr

    result = worker_cli(stack, "kill", "--worker", before["name"], "--yes", "--wait")

    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 30
    while psutil.pid_exists(before["pid"]) and psutil.Process(before["pid"]).status() != "zombie":
        assert time.monotonic() < deadline, "the worker process is still alive"
        time.sleep(0.5)
    # The cluster's guard starts a fresh worker in its place.
    online_worker(stack, where=lambda w: w["pid"] != before["pid"])


def test_status_exits_non_zero_when_no_worker_is_online(stack):
    stack.stop_worker()
    try:
        deadline = time.monotonic() + 30
        while True:
            code, report = status(stack)
            if code == 1 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert code == 1
        assert report["online"] == 0
    finally:
        stack.start_worker()
