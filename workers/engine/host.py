"""The one engine a worker process holds, kept between tasks and swapped by model.

Whoever runs requests on the engine holds it through `engine_for` (a batch, or a
realtime request that may swap models) or `in_use` (a realtime request for
whatever is loaded). A swap waits until nobody holds the old engine, so a batch
never loses its engine mid-chunk and a realtime answer is never cut off. A model
loaded on demand for realtime requests stays loaded while they keep coming:
batches wait until it has been unused for REALTIME_SWAP_HOLD_SECONDS. An engine
whose process died counts as not loaded: the next batch loads a new one.

While a model loads, `loading_model_name()` names it (the heartbeat shows the
worker as loading); `last_load()` says which model loaded last and how long it took.
"""

import logging
import multiprocessing.util
import threading
import time
from contextlib import contextmanager

from django.conf import settings
from django.utils import timezone

logger = logging.getLogger(__name__)

_engine = None
_loading = None
_lock = threading.RLock()
_changed = threading.Condition(_lock)
_users = 0
# Callers waiting to swap or unload: while there are any, a realtime request for
# the old model is refused rather than allowed to delay them (outside a hold).
_waiting = 0
_hold_until = 0.0
_finalizer_registered = False
_last_load = None


class EngineArgsRefused(ValueError):
    """A registered model asks for engine arguments outside the allow-list."""


def _check_engine_args(registered_model):
    # Again here, not only in the admin and register_model: a row written some
    # other way (a shell, an older release) must not load code either.
    allowed = settings.VLLM_BATCH["ENGINE_ARGS_ALLOWED"]
    refused = sorted(name for name in (registered_model.extra_engine_args or {}) if name not in allowed)
    if refused:
        raise EngineArgsRefused(
            f"model {registered_model.name}: engine arguments not allowed: {', '.join(refused)} "
            "(VLLM_BATCH_ENGINE_ARGS_ALLOWED)"
        )


class EngineBusy(Exception):
    """The engine stayed in use past the caller's deadline."""


class Interrupted(Exception):
    """The caller asked to stop waiting (the worker is stopping, say)."""


def current():
    return _engine


def _alive(engine):
    return engine is not None and not getattr(engine, "dead", False)


def loaded_model_name():
    engine = _engine
    return engine.name if _alive(engine) else None


def loading_model_name():
    return _loading


def last_load():
    """{"model", "seconds", "at"} of the last model load that succeeded, or None."""
    return _last_load


def users():
    return _users


def waiting():
    """Callers waiting to swap the engine or unload it."""
    return _waiting


def hold_seconds_left():
    return max(0.0, _hold_until - time.monotonic())


def _hold_seconds():
    return settings.VLLM_BATCH["REALTIME_SWAP_HOLD_SECONDS"]


def _holds(registered_model, args):
    return _alive(_engine) and _engine.name == registered_model.name and _engine.engine_args == args


def _release(extend_hold):
    global _users, _hold_until
    with _changed:
        _users -= 1
        if extend_hold and _hold_until:
            _hold_until = max(_hold_until, time.monotonic() + _hold_seconds())
        _changed.notify_all()


def _wait_for_turn(registered_model, args, deadline, interrupted, respect_hold):
    """Waits (holding the lock between waits) until the engine is ours or free to swap."""
    global _waiting
    _waiting += 1
    announced = False
    try:
        while not _holds(registered_model, args):
            held = respect_hold and time.monotonic() < _hold_until
            if not _users and not held:
                return
            if not announced:
                why = "realtime requests keep it loaded" if held else f"{_users} request(s) still run on it"
                logger.info("waiting to swap %s for %s: %s", loaded_model_name(), registered_model.name, why)
                announced = True
            if interrupted is not None and interrupted():
                raise Interrupted
            wait = 1.0
            if held:
                wait = min(wait, _hold_until - time.monotonic())
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EngineBusy(f"the engine stayed busy with {loaded_model_name()}")
                wait = min(wait, left)
            _changed.wait(max(wait, 0.01))
    finally:
        _waiting -= 1


@contextmanager
def engine_for(registered_model, *, deadline=None, interrupted=None, for_realtime=False):
    """Holds the engine for `registered_model` while the block runs, loading it
    (and unloading any other model once nobody holds it) when needed.

    Waits until `deadline` (time.monotonic(); EngineBusy after) and stops waiting
    when `interrupted()` says so (Interrupted). A model loaded `for_realtime`
    is kept while realtime requests use it; a batch waits for that hold to end."""
    global _users, _hold_until
    with _changed:
        args = registered_model.engine_args()
        if not _holds(registered_model, args):
            _wait_for_turn(registered_model, args, deadline, interrupted, respect_hold=not for_realtime)
            if not _holds(registered_model, args):
                _load(registered_model, args)
                _hold_until = time.monotonic() + _hold_seconds() if for_realtime else 0.0
        _users += 1
        engine = _engine
    try:
        yield engine
    finally:
        _release(extend_hold=for_realtime)


@contextmanager
def in_use(name=None):
    """Holds the loaded engine while the block runs if it serves `name` (any
    model when None); yields None when it does not, or is about to be swapped."""
    global _users
    with _changed:
        engine = _engine
        swapping = _waiting and time.monotonic() >= _hold_until
        if not _alive(engine) or (name and engine.name != name) or swapping:
            engine = None
        else:
            _users += 1
    try:
        yield engine
    finally:
        if engine is not None:
            _release(extend_hold=True)


def get_engine(registered_model):
    """Loads `registered_model` if needed and returns its engine, without holding it."""
    with engine_for(registered_model) as engine:
        return engine


def _load(registered_model, args):
    global _engine, _loading, _last_load
    _check_engine_args(registered_model)
    _unload_now()
    _register_finalizer()
    _loading = registered_model.name
    try:
        started = time.monotonic()
        _engine = _new_engine(registered_model.name, args)
        _last_load = {"model": registered_model.name, "seconds": time.monotonic() - started, "at": timezone.now()}
    finally:
        _loading = None
        _changed.notify_all()


def _new_engine(name, args):
    # The one import of vLLM, here and not at the top: the web process and the
    # fast tests import this module but must never pay for (or need) vLLM.
    from .vllm_engine import Engine

    return Engine(name, args)


def unload(wait=30.0, force=True):
    """Shuts the engine down and frees its memory; the worker stays up. Waits up
    to `wait` seconds for requests running on it to finish; then, unless
    `force`, leaves it loaded. Returns whether nothing is loaded now."""
    global _waiting, _hold_until
    deadline = time.monotonic() + wait
    with _changed:
        _waiting += 1
        try:
            while _users and time.monotonic() < deadline:
                _changed.wait(min(1.0, max(deadline - time.monotonic(), 0.01)))
        finally:
            _waiting -= 1
        if _users:
            if not force:
                return False
            logger.warning("unloading %s with %d request(s) still on it", loaded_model_name(), _users)
        _hold_until = 0.0
        _unload_now()
        return True


def _unload_now():
    global _engine
    engine, _engine = _engine, None
    if engine is not None:
        logger.info("unloading model %s", engine.name)
        engine.shutdown()


def _register_finalizer():
    # A worker process exits through multiprocessing, which joins its non-daemonic
    # children (vLLM's EngineCore) before atexit handlers would run: without an
    # explicit shutdown here the worker hangs forever on stop.
    global _finalizer_registered
    if not _finalizer_registered:
        multiprocessing.util.Finalize(None, unload, kwargs={"wait": 0.0}, exitpriority=100)
        _finalizer_registered = True
