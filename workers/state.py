"""What this worker process is doing now and what it has been asked to do: read by
its heartbeat, set by the batch runner, the realtime server and the runtime. One
per process.

Shared by workers/runner.py, workers/runtime/ and workers/realtime/server.py, and
so kept beside them rather than inside any of them.
"""

import os
import signal
import threading

from .models import Worker

_lock = threading.Lock()
_state = {"state": Worker.State.STARTING, "batch_id": None}
# Operator commands waiting for the batch loop to hand its batch back.
handback = {"clear_gpu": None, "restart": None}
# Realtime requests waiting for the batch loop to let go of the engine, to swap models.
_swaps_wanted = 0
# Set by SIGTERM (or a Restart command): the batch loop hands its batch back at the next chunk.
stop_requested = threading.Event()
_busy = threading.Event()
# Wakes the heartbeat thread before its interval.
beat_now = threading.Event()


def get():
    with _lock:
        return dict(_state)


def set_state(state, batch_id=None):
    with _lock:
        _state["state"] = state
        _state["batch_id"] = batch_id


def operator_handback_requested():
    return any(handback.values())


def handback_requested():
    return operator_handback_requested() or _swaps_wanted > 0


def poke():
    """Has the heartbeat write now, not at the next interval (after a model swap, say)."""
    beat_now.set()


def is_busy():
    return _busy.is_set()


def request_stop():
    """Stops this worker like SIGTERM does, from any thread."""
    stop_requested.set()
    if not _busy.is_set():
        # Only the main thread can leave the task loop: let the signal handler do it.
        os.kill(os.getpid(), signal.SIGTERM)


class busy:
    """Marks the worker busy while a task runs; exits after it if a stop came."""

    def __enter__(self):
        _busy.set()

    def __exit__(self, *exc):
        _busy.clear()
        if stop_requested.is_set():
            raise SystemExit(0)


class swap_wanted:
    """Asks the batch loop to hand its batch back at the next chunk while the block runs."""

    def __enter__(self):
        global _swaps_wanted
        with _lock:
            _swaps_wanted += 1

    def __exit__(self, *exc):
        global _swaps_wanted
        with _lock:
            _swaps_wanted -= 1


class processing:
    """Marks the worker busy with a batch while the block runs."""

    def __init__(self, batch_id):
        self.batch_id = batch_id

    def __enter__(self):
        set_state(Worker.State.PROCESSING, self.batch_id)

    def __exit__(self, *exc):
        if get()["state"] != Worker.State.STOPPING:
            set_state(Worker.State.IDLE)
