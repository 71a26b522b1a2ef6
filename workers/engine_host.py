"""The one engine a worker process holds, kept between tasks and swapped by model.

Imports workers.engine (and so vLLM) only when a model is first needed.
"""

import logging
import multiprocessing.util
import threading

logger = logging.getLogger(__name__)

_engine = None
_loading = None
_lock = threading.RLock()
_finalizer_registered = False


def current():
    return _engine


def loaded_model_name():
    engine = _engine
    return engine.name if engine is not None else None


def loading_model_name():
    return _loading


def get_engine(registered_model):
    """Returns the engine for `registered_model`, loading it (and unloading any
    other model first) when needed."""
    global _engine, _loading
    from . import state

    with _lock:
        args = registered_model.engine_args()
        if _engine is not None and _engine.name == registered_model.name and _engine.engine_args == args:
            return _engine
        unload()
        from .engine import Engine

        _register_finalizer()
        _loading = registered_model.name
        try:
            with state.loading():
                _engine = Engine(registered_model.name, args)
        finally:
            _loading = None
        return _engine


def unload():
    """Shuts the engine down and frees its memory; the worker stays up."""
    global _engine
    with _lock:
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
        multiprocessing.util.Finalize(None, unload, exitpriority=100)
        _finalizer_registered = True
