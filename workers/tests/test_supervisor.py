"""Health as the worker itself reports it: a stuck batch (fresh lease, no progress)
and systemd's watchdog pings, sent only while healthy."""

import socket
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Batch
from jobs.tests.factories import chat_request, make_batch
from workers import state
from workers.models import Worker
from workers.runtime import heartbeat, sdnotify

NAME = "test-host:4242"


@pytest.fixture
def stuck_batch(user, chat_model, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "STUCK_MINUTES": 30.0}
    batch = make_batch(user, [chat_request("a")])
    now = timezone.now()
    Batch.objects.filter(pk=batch.pk).update(
        status=Batch.Status.IN_PROGRESS, claimed_by=NAME, heartbeat_at=now, progress_at=now - timedelta(minutes=31)
    )
    with state.processing(batch.pk):
        yield batch


def test_a_fresh_lease_without_progress_for_the_stuck_minutes_makes_the_worker_unhealthy(stuck_batch):
    worker = heartbeat.beat(NAME, timezone.now())
    assert worker.unhealthy_reason == f"batch {stuck_batch.pk} made no progress for 31 min"


def test_a_batch_that_moves_is_not_stuck(stuck_batch):
    Batch.objects.filter(pk=stuck_batch.pk).update(progress_at=timezone.now() - timedelta(minutes=29))
    assert heartbeat.beat(NAME, timezone.now()).unhealthy_reason == ""


def test_a_stuck_worker_counts_an_attempt_marks_itself_lost_and_restarts(stuck_batch):
    worker = heartbeat.beat(NAME, timezone.now())
    killed = []

    heartbeat.restart_stuck(worker, stuck_batch.pk, kill=lambda: killed.append(True))

    assert killed == [True]
    stuck_batch.refresh_from_db()
    assert stuck_batch.attempts == 1
    assert stuck_batch.last_attempt_error.startswith("stuck: batch")
    worker.refresh_from_db()
    assert worker.state == Worker.State.LOST
    assert "restarted itself" in worker.lost_reason


def test_sd_notify_sends_one_datagram_to_the_notify_socket(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(2)
        assert sdnotify.notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": path})
        assert server.recv(100) == b"WATCHDOG=1"


def test_sd_notify_without_systemd_sends_nothing():
    assert sdnotify.notify("WATCHDOG=1", environ={}) is False
    assert sdnotify.notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": "/nonexistent/socket"}) is False


def test_the_heartbeat_thread_pings_only_while_healthy(db, monkeypatch, stuck_batch, settings):
    sent = []
    monkeypatch.setattr(sdnotify, "notify", lambda message, environ=None: sent.append(message))
    restarted = []
    monkeypatch.setattr(heartbeat, "restart_stuck", lambda worker, batch_id: restarted.append(batch_id))
    thread = heartbeat.HeartbeatThread(interval=0.05)
    thread.name_ = NAME

    monkeypatch.setattr(heartbeat, "pending_commands", lambda name: thread.stop() or [])
    thread.run()
    assert restarted == [stuck_batch.pk]
    assert sent == []

    Batch.objects.filter(pk=stuck_batch.pk).update(progress_at=timezone.now())
    thread.stop_event.clear()
    thread.run()
    assert sent == ["READY=1\nWATCHDOG=1"]
