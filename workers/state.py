"""What this worker process is doing now, for its heartbeat. One per process."""

import threading

from .models import Worker

_lock = threading.Lock()
_state = {"state": Worker.State.STARTING, "batch_id": None}
# Operator commands waiting for the batch loop to hand its batch back.
handback = {"clear_gpu": None, "restart": None}
# Realtime requests waiting for the batch loop to let go of the engine, to swap models.
_swaps_wanted = 0


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


class loading:
    def __enter__(self):
        self.before = get()
        set_state(Worker.State.LOADING, self.before["batch_id"])

    def __exit__(self, *exc):
        if get()["state"] == Worker.State.LOADING:
            set_state(self.before["state"], self.before["batch_id"])
