"""What a django-q2 worker process does when it starts and when it is told to stop.

On SIGTERM the worker stops within one chunk: the runner saves what is done,
hands the batch back to the queue, and the process exits; the engine is shut
down on the way out (engine/host.py registers that), so stop never hangs on
vLLM's child processes.
"""

import logging
import multiprocessing.util
import os
import signal
import socket

from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q

from jobs import leases

from .. import selectors, state
from ..engine import host as engine_host
from ..models import Worker, WorkerCommand
from ..realtime import server as realtime_server
from .heartbeat import HeartbeatThread

logger = logging.getLogger(__name__)


def _on_sigterm(signum, frame):
    state.stop_requested.set()
    state.set_state(Worker.State.STOPPING, state.get()["batch_id"])
    busy = state.is_busy()
    logger.info("worker got signal %s: stopping %s", signum, "after this chunk" if busy else "now")
    if not busy:
        raise SystemExit(0)


def _mark_stopped(name):
    try:
        Worker.objects.filter(name=name).update(state=Worker.State.STOPPED, current_batch=None)
    except Exception:
        logger.exception("could not mark worker %s stopped", name)
    finally:
        close_old_connections()


def _reload_after_restart():
    """Loads the model the restarted predecessor had, so a restart keeps the worker warm."""
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
    model = selectors.model_get_active(command.reload_model)
    if model is not None:
        logger.info("reloading %s after restart", model.name)
        engine_host.get_engine(model)


def on_worker_spawn(sender, proc_name=None, **kwargs):
    signal.signal(signal.SIGTERM, _on_sigterm)
    realtime_server.start()
    heartbeat = HeartbeatThread()
    heartbeat.start()
    multiprocessing.util.Finalize(None, _mark_stopped, args=(heartbeat.name_,), exitpriority=50)
    try:
        leases.requeue_stale_batches()
        _reload_after_restart()
    except Exception:
        logger.exception("worker start-up step failed")
    state.set_state(Worker.State.IDLE)
