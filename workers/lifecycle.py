"""What a django-q2 worker process does when it starts and when it is told to stop.

On SIGTERM the worker stops within one chunk: the runner saves what is done,
hands the batch back to the queue, and the process exits; the engine is shut
down on the way out (engine_host registers that), so stop never hangs on
vLLM's child processes.
"""

import logging
import signal
import threading

logger = logging.getLogger(__name__)

stop_requested = threading.Event()
_busy = threading.Event()


def _on_sigterm(signum, frame):
    stop_requested.set()
    logger.info("worker got signal %s: stopping %s", signum, "after this chunk" if _busy.is_set() else "now")
    if not _busy.is_set():
        raise SystemExit(0)


def on_worker_spawn(sender, proc_name=None, **kwargs):
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        from .watchdog import requeue_stale_batches

        requeue_stale_batches()
    except Exception:
        logger.exception("could not requeue stale batches at worker start")


class busy:
    """Marks the worker busy while a task runs; exits after it if a stop came."""

    def __enter__(self):
        _busy.set()

    def __exit__(self, *exc):
        _busy.clear()
        if stop_requested.is_set():
            raise SystemExit(0)
