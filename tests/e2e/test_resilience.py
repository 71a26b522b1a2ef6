"""Cancel, kill -9, stop and restart against the running cluster. Runs last:
it restarts the stack's worker."""

import time

import pytest

from .conftest import chat_request, read_lines, submit, wait_finished, wait_for

pytestmark = pytest.mark.e2e


def long_batch(client, n, max_tokens=64):
    requests = [
        chat_request(f"r{i}", f"long job {i}", max_tokens=max_tokens, temperature=0, ignore_eos=True) for i in range(n)
    ]
    return submit(client, requests)


def test_cancel_keeps_finished_results(client):
    batch = long_batch(client, 3000)
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 32, timeout=300)

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = wait_finished(client, batch.id, timeout=60)

    assert batch.status == "cancelled"
    assert batch.cancelling_at and batch.cancelled_at
    outputs = read_lines(client, batch.output_file_id)
    assert len(outputs) == batch.request_counts.completed
    assert 32 <= len(outputs) < 3000
    assert len({o["custom_id"] for o in outputs}) == len(outputs)


def test_engine_process_killed_mid_batch_is_replaced_and_the_batch_completes(client, stack):
    """kill -9 of vLLM's EngineCore only (as the OOM killer would): the worker
    notices, keeps what finished, loads a new engine and resumes the batch."""
    n = 2500
    batch = long_batch(client, n)
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 48, timeout=300)
    [engine_core] = [p for p in stack.worker_processes() if p.cmdline()[:1] == ["VLLM::EngineCore"]]
    worker = engine_core.parent()
    engine_core.kill()

    batch = wait_finished(client, batch.id, timeout=400)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (n, 0)
    ids = [o["custom_id"] for o in read_lines(client, batch.output_file_id)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(n))
    assert worker.is_running(), "the worker process itself stays up"
    assert not engine_core.is_running()


def test_kill_9_mid_batch_then_restart_completes_every_request_once(client, stack):
    n = 2500
    batch = long_batch(client, n)
    progress = wait_for(client, batch.id, lambda b: b.request_counts.completed >= 48, timeout=300)
    assert progress.request_counts.completed < n, "the batch finished before the kill; make it longer"

    stack.kill_worker()
    saved = client.batches.retrieve(batch.id)
    assert saved.status == "in_progress"
    assert saved.request_counts.completed >= 48

    stack.start_worker()
    batch = wait_finished(client, batch.id, timeout=400)

    assert batch.status == "completed"
    assert batch.request_counts.completed == n
    ids = [o["custom_id"] for o in read_lines(client, batch.output_file_id)]
    ids += [e["custom_id"] for e in read_lines(client, batch.error_file_id)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(n))


def test_stop_mid_batch_is_bounded_and_restart_resumes(client, stack):
    """SIGTERM to qcluster alone: the worker saves its chunk, hands the batch back,
    shuts the engine down and exits; a hang on vLLM's children would fail this."""
    n = 2000
    batch = long_batch(client, n)
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 16, timeout=300)
    engine_pids = [p.pid for p in stack.worker_processes()]

    seconds = stack.stop_worker(timeout=120)

    assert seconds < 60, f"stop took {seconds:.0f} s"
    import psutil

    assert not [pid for pid in engine_pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    stopped = client.batches.retrieve(batch.id)
    assert stopped.status == "in_progress"

    started = time.monotonic()
    stack.start_worker()
    batch = wait_finished(client, batch.id, timeout=400)
    assert batch.status == "completed"
    assert batch.request_counts.completed == n
    assert time.monotonic() - started < 400
    assert len(read_lines(client, batch.output_file_id)) == n


def test_sigterm_to_the_whole_process_group_is_bounded_and_resumes(client, stack):
    """What systemd does on stop (KillMode=control-group): every process of the
    cluster gets SIGTERM at once. django-q2 alone would hang here."""
    import os
    import signal

    n = 1500
    batch = long_batch(client, n)
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 16, timeout=300)
    worker = stack.worker
    started = time.monotonic()

    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(timeout=120)

    assert time.monotonic() - started < 60
    stack.worker = None
    stack.start_worker()
    batch = wait_finished(client, batch.id, timeout=400)
    assert batch.status == "completed"
    ids = [o["custom_id"] for o in read_lines(client, batch.output_file_id)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(n))
