"""Holding, swapping and unloading the worker's one engine, with a fake engine class."""

import threading
import time

import pytest

from jobs.tests.factories import CHAT_MODEL, EMBEDDING_MODEL
from workers.engine import host as engine_host


class LoadedEngine:
    def __init__(self, name, args):
        self.name = name
        self.engine_args = dict(args)
        self.shut_down = False

    def shutdown(self):
        self.shut_down = True


@pytest.fixture(autouse=True)
def fake_engines(monkeypatch, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "REALTIME_SWAP_HOLD_SECONDS": 60.0}
    loaded = []

    def new_engine(name, args):
        loaded.append(LoadedEngine(name, args))
        return loaded[-1]

    monkeypatch.setattr(engine_host, "_new_engine", new_engine)
    monkeypatch.setattr(engine_host, "_register_finalizer", lambda: None)
    yield loaded
    engine_host.unload(wait=0)
    assert engine_host.users() == 0


def take(registered_model, **kwargs):
    with engine_host.engine_for(registered_model, **kwargs) as engine:
        return engine


def in_thread(target):
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def until(predicate, timeout=5.0):
    """Waits (bounded) until another thread has made `predicate` true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def swap_waiting():
    return engine_host.waiting() > 0


def test_same_model_is_loaded_once_and_another_swaps_it_out(chat_model, embedding_model, fake_engines):
    with engine_host.engine_for(chat_model) as first:
        pass
    with engine_host.engine_for(chat_model) as again:
        assert again is first
    with engine_host.engine_for(embedding_model) as other:
        assert other.name == EMBEDDING_MODEL
    assert [e.name for e in fake_engines] == [CHAT_MODEL, EMBEDDING_MODEL]
    assert first.shut_down and not other.shut_down


def test_a_swap_waits_until_the_holder_lets_go(chat_model, embedding_model):
    holding = threading.Event()
    released = threading.Event()

    def hold_for_a_while():
        with engine_host.engine_for(chat_model):
            holding.set()
            released.wait(5)

    holder = in_thread(hold_for_a_while)
    assert holding.wait(5)
    with pytest.raises(engine_host.EngineBusy):
        take(embedding_model, deadline=time.monotonic() + 0.3)
    assert engine_host.loaded_model_name() == CHAT_MODEL
    # The holder lets go once the swap below waits for it.
    in_thread(lambda: (until(swap_waiting), released.set()))
    with engine_host.engine_for(embedding_model, deadline=time.monotonic() + 5) as engine:
        assert engine.name == EMBEDDING_MODEL
    holder.join(5)


def test_in_use_serves_only_the_loaded_model(chat_model):
    with engine_host.in_use(CHAT_MODEL) as engine:
        assert engine is None
    engine_host.get_engine(chat_model)
    with engine_host.in_use(CHAT_MODEL) as engine:
        assert engine.name == CHAT_MODEL
        assert engine_host.users() == 1
    with engine_host.in_use(None) as engine:
        assert engine.name == CHAT_MODEL
    with engine_host.in_use(EMBEDDING_MODEL) as engine:
        assert engine is None


def test_a_waiting_swap_turns_new_realtime_requests_away(chat_model, embedding_model):
    engine_host.get_engine(chat_model)
    running = threading.Event()
    done = threading.Event()

    def realtime_request():
        with engine_host.in_use(CHAT_MODEL):
            running.set()
            done.wait(5)

    request = in_thread(realtime_request)
    running.wait(5)
    swap = in_thread(lambda: engine_host.get_engine(embedding_model))
    until(swap_waiting)
    with engine_host.in_use(CHAT_MODEL) as engine:
        assert engine is None, "a new request would keep delaying the swap"
    done.set()
    swap.join(5)
    request.join(5)
    assert engine_host.loaded_model_name() == EMBEDDING_MODEL


def test_a_model_loaded_for_realtime_is_kept_while_requests_come(chat_model, embedding_model, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "REALTIME_SWAP_HOLD_SECONDS": 0.5}
    engine_host.get_engine(chat_model)
    with engine_host.engine_for(embedding_model, for_realtime=True):
        pass
    assert engine_host.hold_seconds_left() > 0
    # A batch for the other model waits for the hold ...
    with pytest.raises(engine_host.EngineBusy):
        take(chat_model, deadline=time.monotonic() + 0.2)
    # ... which each realtime request extends, even while the batch waits.
    with engine_host.in_use(EMBEDDING_MODEL) as engine:
        assert engine is not None
    started = time.monotonic()
    with engine_host.engine_for(chat_model, deadline=time.monotonic() + 5) as engine:
        assert engine.name == CHAT_MODEL
    assert time.monotonic() - started >= 0.4


def test_realtime_swaps_do_not_wait_for_the_hold(chat_model, embedding_model):
    with engine_host.engine_for(embedding_model, for_realtime=True):
        pass
    with engine_host.engine_for(chat_model, for_realtime=True, deadline=time.monotonic() + 1) as engine:
        assert engine.name == CHAT_MODEL


def test_a_waiting_batch_stops_waiting_when_interrupted(chat_model, embedding_model):
    with engine_host.engine_for(embedding_model, for_realtime=True):
        pass
    with pytest.raises(engine_host.Interrupted):
        take(chat_model, interrupted=lambda: True)
    assert engine_host.loaded_model_name() == EMBEDDING_MODEL


def test_unload_waits_for_running_requests_then_frees_the_engine(chat_model, fake_engines):
    engine_host.get_engine(chat_model)
    finished = []
    running = threading.Event()

    def realtime_request():
        with engine_host.in_use(CHAT_MODEL):
            running.set()
            until(swap_waiting)  # the unload below waits for this request
            finished.append(time.monotonic())

    request = in_thread(realtime_request)
    assert running.wait(5)
    engine_host.unload(wait=5)
    assert finished and time.monotonic() >= finished[0]
    assert engine_host.loaded_model_name() is None
    assert fake_engines[0].shut_down
    request.join(5)


def test_unload_without_force_leaves_an_engine_in_use_loaded(chat_model):
    with engine_host.engine_for(chat_model):
        assert engine_host.unload(wait=0.2, force=False) is False
        assert engine_host.loaded_model_name() == CHAT_MODEL
    assert engine_host.unload(wait=0.2, force=False) is True
    assert engine_host.loaded_model_name() is None


def test_a_model_with_refused_engine_arguments_is_not_loaded(chat_model, fake_engines):
    chat_model.extra_engine_args = {"trust_remote_code": True}
    with pytest.raises(engine_host.EngineArgsRefused, match="trust_remote_code"):
        take(chat_model)
    assert fake_engines == []
    assert engine_host.loaded_model_name() is None


def test_the_last_load_is_timed(chat_model, embedding_model, monkeypatch, fake_engines):
    def slow_engine(name, args):
        time.sleep(0.2)
        return LoadedEngine(name, args)

    monkeypatch.setattr(engine_host, "_new_engine", slow_engine)
    take(chat_model)
    first = engine_host.last_load()
    assert first["model"] == CHAT_MODEL
    assert 0.2 <= first["seconds"] < 5
    take(chat_model)
    assert engine_host.last_load() is first, "holding a loaded model is no new load"

    def refused(name, args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine_host, "_new_engine", refused)
    with pytest.raises(RuntimeError):
        take(embedding_model)
    assert engine_host.last_load() is first, "a failed load keeps the last good one"
