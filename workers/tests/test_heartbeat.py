"""Commands carried out by the worker's heartbeat thread, with a fake engine."""

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import leases
from jobs.tests.factories import chat_request, make_batch
from workers import state
from workers.engine import host as engine_host
from workers.models import WorkerCommand
from workers.runtime import heartbeat

from .factories import make_worker


class LoadedEngine:
    def __init__(self, name, args):
        self.name = name
        self.engine_args = dict(args)

    def shutdown(self):
        pass


@pytest.fixture(autouse=True)
def fake_engine(monkeypatch):
    monkeypatch.setattr(engine_host, "_new_engine", LoadedEngine)
    monkeypatch.setattr(engine_host, "_register_finalizer", lambda: None)
    monkeypatch.setitem(state.handback, "clear_gpu", None)
    unload = engine_host.unload
    yield
    unload(wait=0)


def clear_gpu_command():
    return WorkerCommand.objects.create(worker=make_worker(), action=WorkerCommand.Action.CLEAR_GPU)


def wait_finished(command, timeout=5):
    """The command once the clear-gpu thread that carries it out has ended."""
    for thread in threading.enumerate():
        if thread.name == "clear-gpu":
            thread.join(timeout)
    command.refresh_from_db()
    return command


@pytest.mark.django_db(transaction=True)
def test_clear_gpu_unloads_off_the_heartbeat_thread(chat_model):
    engine_host.get_engine(chat_model)
    command = clear_gpu_command()
    started = time.monotonic()
    heartbeat.carry_out(command)
    assert time.monotonic() - started < 0.5, "the heartbeat thread must not wait for the unload"
    command = wait_finished(command)
    assert command.status == WorkerCommand.Status.DONE
    assert command.result.startswith(f"unloaded {chat_model.name}")
    assert engine_host.loaded_model_name() is None


def test_clear_gpu_of_an_engine_a_batch_took_meanwhile_waits_for_the_handback(chat_model, monkeypatch):
    monkeypatch.setattr(engine_host, "unload", lambda wait, force: False)
    monkeypatch.setattr(state, "get", lambda: {"state": "processing", "batch_id": "batch_x"})
    command = clear_gpu_command()
    heartbeat.clear_gpu(command)
    assert state.handback["clear_gpu"] == command.pk
    command.refresh_from_db()
    assert not command.is_finished


def test_clear_gpu_while_realtime_requests_keep_running_fails_with_a_reason(chat_model, monkeypatch):
    engine_host.get_engine(chat_model)
    monkeypatch.setattr(engine_host, "unload", lambda wait, force: False)
    command = clear_gpu_command()
    heartbeat.clear_gpu(command)
    command.refresh_from_db()
    assert command.status == WorkerCommand.Status.FAILED
    assert "realtime requests" in command.result
    assert engine_host.loaded_model_name() == chat_model.name


def test_poke_wakes_the_heartbeat_before_its_interval(monkeypatch):
    beats = []
    beaten = [threading.Event(), threading.Event()]

    def beat(name, started_at):
        beats.append(time.monotonic())
        beaten[min(len(beats), 2) - 1].set()

    monkeypatch.setattr(heartbeat, "beat", beat)
    monkeypatch.setattr(heartbeat, "pending_commands", lambda name: [])
    thread = heartbeat.HeartbeatThread(interval=60)
    thread.start()
    try:
        assert beaten[0].wait(5)
        state.poke()
        assert beaten[1].wait(5)
        assert len(beats) == 2
    finally:
        thread.stop()
        thread.join(5)
    assert not thread.is_alive()


@pytest.mark.django_db
def test_the_heartbeat_writes_the_last_load_time(chat_model, monkeypatch):
    monkeypatch.setattr(engine_host, "_last_load", None)
    worker = heartbeat.beat("here:1", timezone.now())
    assert worker.last_load_seconds is None and worker.last_load_model == ""
    engine_host.get_engine(chat_model)
    loaded = engine_host.last_load()
    worker = heartbeat.beat("here:1", timezone.now())
    worker.refresh_from_db()
    assert worker.last_load_model == chat_model.name
    assert worker.last_load_seconds == pytest.approx(loaded["seconds"])
    assert worker.last_load_at == loaded["at"]


@pytest.mark.django_db
def test_a_worker_whose_clock_runs_ahead_does_not_judge_its_moving_batch_stuck(user, chat_model, monkeypatch, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "STUCK_MINUTES": 30.0}
    batch = make_batch(user, [chat_request("a")])
    assert leases.claim(batch.pk, "here:1") is not None  # progress_at on the database's clock
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(hours=1))
    with state.processing(batch.pk):
        worker = heartbeat.beat("here:1", timezone.now())
    assert worker.unhealthy_reason == ""
