"""What a django-q2 worker process does when it starts and when it is told to stop.

On SIGTERM the worker stops within one chunk: the runner saves what is done,
hands the batch back to the queue, and the process exits; the engine is shut
down on the way out (engine_host registers that), so stop never hangs on
vLLM's child processes.
"""

import logging
import multiprocessing.util
import os
import signal
import socket
import threading

logger = logging.getLogger(__name__)

stop_requested = threading.Event()
_busy = threading.Event()


def _on_sigterm(signum, frame):
    from . import state
    from .models import Worker

    stop_requested.set()
    state.set_state(Worker.State.STOPPING, state.get()["batch_id"])
    logger.info("worker got signal %s: stopping %s", signum, "after this chunk" if _busy.is_set() else "now")
    if not _busy.is_set():
        raise SystemExit(0)


def request_stop():
    """Stops this worker like SIGTERM does, from any thread."""
    stop_requested.set()
    if not _busy.is_set():
        # Only the main thread can leave the task loop: let the signal handler do it.
        os.kill(os.getpid(), signal.SIGTERM)


def _mark_stopped(name):
    from django.db import close_old_connections

    from .models import Worker

    try:
        Worker.objects.filter(name=name).update(state=Worker.State.STOPPED, current_batch=None)
    except Exception:
        logger.exception("could not mark worker %s stopped", name)
    finally:
        close_old_connections()


def _reload_after_restart():
    """Loads the model the restarted predecessor had, so a restart keeps the worker warm."""
    from django.conf import settings
    from django.db.models import Q

    from . import engine_host
    from .models import RegisteredModel, WorkerCommand

    command = (
        WorkerCommand.objects.filter(
            action=WorkerCommand.Action.RESTART,
            worker__hostname=socket.gethostname(),
            worker__cluster_name=settings.Q_CLUSTER.get("name", ""),
        )
        .exclude(Q(reload_model="") | Q(worker__pid=os.getpid()))
        .order_by("-pk")
        .first()
    )
    if command is None or not WorkerCommand.objects.filter(pk=command.pk, reload_model=command.reload_model).update(
        reload_model=""
    ):
        return
    model = RegisteredModel.objects.filter(name=command.reload_model, is_active=True).first()
    if model is not None:
        logger.info("reloading %s after restart", model.name)
        engine_host.get_engine(model)


def on_worker_spawn(sender, proc_name=None, **kwargs):
    from . import realtime
    from .heartbeat import HeartbeatThread
    from .watchdog import requeue_stale_batches

    signal.signal(signal.SIGTERM, _on_sigterm)
    realtime.start()
    heartbeat = HeartbeatThread()
    heartbeat.start()
    multiprocessing.util.Finalize(None, _mark_stopped, args=(heartbeat.name_,), exitpriority=50)
    try:
        requeue_stale_batches()
        _reload_after_restart()
    except Exception:
        logger.exception("worker start-up step failed")
    from . import state
    from .models import Worker

    state.set_state(Worker.State.IDLE)


class busy:
    """Marks the worker busy while a task runs; exits after it if a stop came."""

    def __enter__(self):
        _busy.set()

    def __exit__(self, *exc):
        _busy.clear()
        if stop_requested.is_set():
            raise SystemExit(0)
