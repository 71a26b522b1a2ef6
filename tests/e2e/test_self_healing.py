"""Self-healing on the real stack: `manage.py watchdog` restarts a cluster killed
with kill -9 mid-batch (the batch completes, every custom_id once) and one frozen
with SIGSTOP (replaced, the frozen processes gone), and gives up past its restart
limit with the reason visible. The tests run in order on one stack; each prints
what it measured (the README's numbers come from here)."""

import json
import re
import signal
import subprocess
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import psutil
import pytest
from standardwebhooks.webhooks import Webhook

from devtools.devstack import PROJECT_DIR, PYTHON, Stack

from .conftest import chat_request, read_lines, submit, wait_finished, wait_for

pytestmark = pytest.mark.e2e

HEARTBEAT = 2.0
TIMEOUT = 3 * HEARTBEAT  # the watchdog's default: 3 heartbeats
INTERVAL = 1.0
MAX_RESTARTS = 2
N = 800


@pytest.fixture(scope="module")
def healing(tmp_path_factory, tiny_model_path):
    stack = Stack(
        tmp_path_factory.mktemp("e2e-healing"),
        env={
            "VLLM_BATCH_CHUNK_SIZE": "16",
            "VLLM_BATCH_STALE_BATCH_SECONDS": "20",
            "VLLM_BATCH_CPU_KVCACHE_GIB": "1",
            "VLLM_BATCH_HEARTBEAT_SECONDS": str(HEARTBEAT),
            "VLLM_BATCH_WATCHDOG_INTERVAL": str(INTERVAL),
            "VLLM_BATCH_WATCHDOG_MAX_RESTARTS": str(MAX_RESTARTS),
            "Q_POLL": "0.2",
            # The completion webhook goes to a receiver on loopback.
            "VLLM_BATCH_WEBHOOK_ALLOW_PRIVATE": "1",
        },
    )
    try:
        stack.setup(tiny_path=tiny_model_path)
        stack.api_key = stack.create_api_key("healing")
        stack.webhook_secret = stack.manage(
            "shell",
            "-c",
            "from jobs import webhooks; from jobs.models import ApiKey; "
            "print(webhooks.endpoint_create(api_key=ApiKey.objects.get(name='healing')).secret)",
        ).split()[-1]  # after the shell's own "N objects imported automatically" line
        stack.start_web()
        stack.start_watchdog()
        stack.client = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=2, timeout=60)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def receiver():
    """A webhook receiver on loopback that records every delivery."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.received = received
    server.url = f"http://127.0.0.1:{server.server_port}/hook"
    yield server
    server.shutdown()
    server.server_close()


def cluster_main(stack):
    """The qcluster process the watchdog runs now, or None."""
    children = psutil.Process(stack.worker.pid).children() if stack.worker.poll() is None else []
    return children[0] if children else None


def wait_new_cluster(stack, old_pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        main = cluster_main(stack)
        if main is not None and main.pid != old_pid:
            return main
        time.sleep(0.1)
    return None


def last_model_load(stack):
    """(when the engine finished loading, as time.time(), seconds it took) from the newest worker.log line saying so."""
    found = None
    for line in (stack.var_dir / "logs" / "worker.log").read_text(errors="replace").splitlines():
        match = re.match(r"(\S+ \S+) .* model \S+ loaded in ([\d.]+) s", line)
        if match:
            found = (datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp(), float(match[2]))
    return found


def gone(process):
    """Ended (a killed grandchild may stay a zombie until whoever inherited it reaps it)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def worker_status(stack):
    result = subprocess.run(
        [PYTHON, "manage.py", "worker", "status", "--json", "--api-url", stack.base_url],
        cwd=PROJECT_DIR,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(result.stdout)


def test_kill_9_of_the_cluster_mid_batch(healing, receiver):
    client = healing.client
    requests = [chat_request(f"h{i}", f"heal {i}", max_tokens=16, temperature=0, ignore_eos=True) for i in range(N)]
    batch = submit(client, requests, metadata={"webhook_url": receiver.url})
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 48, timeout=300)

    old = cluster_main(healing)
    doomed = healing.cluster_processes()
    killed_at = time.monotonic()
    killed_wall = time.time()
    for process in doomed:
        process.kill()
    psutil.wait_procs(doomed, timeout=30)
    done_at_kill = client.batches.retrieve(batch.id).request_counts.completed

    new = wait_new_cluster(healing, old.pid, timeout=30)
    new_cluster_s = time.monotonic() - killed_at
    assert new is not None, "the watchdog did not start a new cluster"
    moved = wait_for(client, batch.id, lambda b: b.request_counts.completed > done_at_kill + 16, timeout=300)
    moving_again_s = time.monotonic() - killed_at
    batch = wait_finished(client, batch.id, timeout=400)
    loaded_at, load_s = last_model_load(healing)
    assert loaded_at > killed_wall, "the new cluster loaded the model"
    after_load_s = moving_again_s - (loaded_at - killed_wall)
    print(
        f"\nMEASURED kill -9: new cluster after {new_cluster_s:.1f} s; model loaded {loaded_at - killed_wall:.1f} s "
        f"after the kill (the engine load itself {load_s:.1f} s); batch moving again {after_load_s:.1f} s after the "
        f"load ({moving_again_s:.1f} s after the kill, {moved.request_counts.completed} done)"
    )
    assert new_cluster_s < 10
    assert after_load_s < 10

    assert batch.status == "completed"
    output = read_lines(client, batch.output_file_id)
    errors = read_lines(client, batch.error_file_id)
    ids = [o["custom_id"] for o in output + errors]
    assert sorted(ids) == sorted(f"h{i}" for i in range(N)), "every custom_id exactly once"
    assert errors == []
    assert batch.usage.input_tokens == sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in output)
    assert batch.usage.output_tokens == sum(o["response"]["body"]["usage"]["completion_tokens"] for o in output)

    # The owner hears about it once, with a signature the Standard Webhooks library accepts.
    deadline = time.monotonic() + 60
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    [(headers, body)] = receiver.received
    event = Webhook(healing.webhook_secret).verify(body, {k.lower(): v for k, v in headers.items()})
    assert event["type"] == "batch.completed"
    assert event["data"]["id"] == batch.id and event["data"]["request_counts"]["completed"] == N

    status = worker_status(healing)
    lost = [w for w in status["workers"] if w["lost_reason"]]
    assert any("SIGKILL" in w["lost_reason"] for w in lost), status["workers"]
    [dog] = status["watchdogs"]
    assert dog["restarts"] == 1 and "SIGKILL" in dog["last_reason"]


def test_sigstop_of_the_worker_tree_is_replaced_within_two_timeouts(healing):
    old = cluster_main(healing)
    frozen = healing.cluster_processes()
    assert len(frozen) >= 3  # main, sentinel and friends, the worker (and its engine)
    # Once the worker beats: a freshly restarted cluster is given a start grace instead.
    deadline = time.monotonic() + 120
    while not any(w["freshness"] == "online" for w in worker_status(healing)["workers"]):
        assert time.monotonic() < deadline, "no worker online after the restart"
        time.sleep(0.5)
    frozen = healing.cluster_processes()
    frozen_at = time.monotonic()
    for process in frozen:
        process.send_signal(signal.SIGSTOP)

    new = wait_new_cluster(healing, old.pid, timeout=4 * TIMEOUT)
    replaced_s = time.monotonic() - frozen_at
    print(f"\nMEASURED SIGSTOP: replaced after {replaced_s:.1f} s (timeout {TIMEOUT:.0f} s)")
    assert new is not None, "the frozen cluster was not replaced"
    assert replaced_s < 2 * TIMEOUT
    assert all(gone(p) for p in frozen), "the frozen processes must be gone"
    status = worker_status(healing)
    assert any((w["lost_reason"] or "").startswith("frozen") for w in status["workers"]), status["workers"]


def test_past_the_restart_limit_the_watchdog_stops_and_says_why(healing):
    old = cluster_main(healing)
    doomed = healing.cluster_processes()
    for process in doomed:
        process.kill()
    psutil.wait_procs(doomed, timeout=30)

    assert wait_new_cluster(healing, old.pid, timeout=5 * INTERVAL + 5) is None, "restarted past the limit"
    assert healing.worker.poll() is None, "the watchdog itself stays up to report"
    [dog] = worker_status(healing)["watchdogs"]
    assert dog["state"] == "failed"
    assert dog["restarts"] == MAX_RESTARTS
    assert dog["last_reason"].startswith(f"gave up: {MAX_RESTARTS} restarts within the hour")
