"""The worker's heartbeat thread: writes its Worker row every interval, also while
a model loads or a batch runs, and carries out the operator's commands."""

import logging
import os
import signal
import socket
import threading

import psutil
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from jobs import leases, queueing, ranges
from jobs import services as job_services

from .. import state
from ..engine import host as engine_host
from ..models import Worker, WorkerCommand
from ..processes import kill_all
from ..realtime import server as realtime_server
from . import memory, sdnotify

logger = logging.getLogger(__name__)


def worker_name():
    """A worker is named as it holds batch leases (host@boot-tag:pid), so a batch's holder names its worker."""
    return leases.holder_name()


def _shown_state(current):
    if engine_host.loading_model_name() and current["state"] != Worker.State.STOPPING:
        return Worker.State.LOADING
    return current["state"]


def stuck_reason(name, batch_id, now=None):
    """Why this worker is alive but stuck (its batch made no progress for
    VLLM_BATCH_STUCK_MINUTES under a fresh lease), or "". Judged on the database's
    clock, which wrote the batch's progress_at, unless `now` is given."""
    if batch_id is None:
        return ""
    quiet = leases.stuck_for(batch_id, name, now)
    if quiet is None:
        return ""
    return f"batch {batch_id} made no progress for {quiet / 60:.0f} min"


def beat(name, started_at):
    now = timezone.now()
    current = state.get()
    fields = {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "cluster_name": settings.Q_CLUSTER.get("name", ""),
        "state": _shown_state(current),
        "current_model": engine_host.loaded_model_name() or engine_host.loading_model_name() or "",
        "current_batch_id": current["batch_id"],
        "started_at": started_at,
        "last_seen": now,
        "realtime_url": realtime_server.url(),
        "realtime_token": realtime_server.token(),
        "unhealthy_reason": stuck_reason(name, current["batch_id"]),
        **memory.snapshot(),
    }
    loaded = engine_host.last_load()
    if loaded is not None:
        fields.update(last_load_model=loaded["model"], last_load_seconds=loaded["seconds"], last_load_at=loaded["at"])
    worker, _ = Worker.objects.update_or_create(name=name, defaults=fields)
    return worker


def restart_stuck(worker, batch_id, kill=None):
    """A stuck worker counts an attempt on its batch and kills its own process tree:
    the cluster's sentinel starts a new worker, which takes the batch back (its
    holder is dead) and resumes from the last saved chunk."""
    reason = f"stuck: {worker.unhealthy_reason}"
    logger.error("worker %s is %s: restarting it", worker.name, reason)
    job_services.batch_attempt_count(batch_id=batch_id, reason=reason)
    Worker.objects.filter(pk=worker.pk).update(
        state=Worker.State.LOST, lost_at=timezone.now(), lost_reason=f"{reason}; the worker restarted itself"
    )
    close_old_connections()
    (kill or _kill_self)()


def _finish(command, status, result, **extra):
    WorkerCommand.objects.filter(pk=command.pk).update(
        status=status, result=result, finished_at=timezone.now(), updated_at=timezone.now(), **extra
    )
    logger.info("command %s %s: %s", command.action, status, result)


def _kill_self():
    kill_all(psutil.Process().children(recursive=True), timeout=5)
    os.kill(os.getpid(), signal.SIGKILL)


def carry_out(command):
    """Acts on one command inside the worker process."""
    WorkerCommand.objects.filter(pk=command.pk).update(
        status=WorkerCommand.Status.ACKNOWLEDGED, acknowledged_at=timezone.now()
    )
    if command.action == WorkerCommand.Action.CLEAR_GPU:
        if state.get()["batch_id"] is not None:
            # The batch loop hands its batch back at the next chunk, then unloads.
            state.handback["clear_gpu"] = command.pk
            return
        # Unloading waits for a model load or realtime requests in progress: not on
        # this thread, which must keep beating meanwhile.
        threading.Thread(target=_clear_gpu_now, args=(command,), name="clear-gpu", daemon=True).start()
    elif command.action == WorkerCommand.Action.RESTART:
        model = engine_host.loaded_model_name() or ""
        _finish(command, WorkerCommand.Status.DONE, f"restarting pid {os.getpid()}", reload_model=model)
        state.handback["restart"] = command.pk
        state.request_stop()
    elif command.action == WorkerCommand.Action.KILL:
        _finish(command, WorkerCommand.Status.DONE, f"killed pid {os.getpid()}")
        close_old_connections()
        _kill_self()


def _clear_gpu_now(command):
    try:
        clear_gpu(command)
    except Exception:
        logger.exception("clear-gpu failed")
    finally:
        close_old_connections()


def clear_gpu(command):
    before = memory.snapshot()["memory_used"]
    model = engine_host.loaded_model_name()
    if not engine_host.unload(wait=30.0, force=False):
        if state.get()["batch_id"] is not None:
            # A batch took the engine meanwhile: it hands it back at its next chunk.
            state.handback["clear_gpu"] = command.pk
            return
        _finish(command, WorkerCommand.Status.FAILED, f"{model} is still answering realtime requests; try again")
        state.handback["clear_gpu"] = None
        return
    after = memory.snapshot()["memory_used"]
    result = f"unloaded {model or 'nothing'}; memory {before / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB"
    _finish(command, WorkerCommand.Status.DONE, result)
    state.handback["clear_gpu"] = None


def pending_commands(name):
    return list(WorkerCommand.objects.filter(worker__name=name, status=WorkerCommand.Status.PENDING).order_by("pk"))


def wake_for_free_ranges():
    """An idle worker asks for a wake-up while a split batch has a range free that
    it may run (jobs.ranges): the wake-ups sent when the batch was split may have
    been taken by busy clusters, whose task queues hold a few each. Once a beat
    while that lasts; returns the batch's id, or None."""
    if state.is_busy() or state.get()["state"] != Worker.State.IDLE:
        return None
    batch_id = ranges.helpable(
        allowed_models=settings.VLLM_BATCH["NODE_MODELS"], held_model=engine_host.loaded_model_name()
    )
    if batch_id is not None:
        queueing.enqueue_batch(batch_id)
    return batch_id


class HeartbeatThread(threading.Thread):
    """Beats every interval, and at once when state.poke() asks."""

    def __init__(self, interval=None):
        super().__init__(name="heartbeat", daemon=True)
        self.interval = interval or settings.VLLM_BATCH["HEARTBEAT_SECONDS"]
        self.stop_event = threading.Event()
        self.wake_event = state.beat_now
        self.name_ = worker_name()
        self.started_at = timezone.now()

    def run(self):
        ready = False
        while not self.stop_event.is_set():
            try:
                batch_id = state.get()["batch_id"]
                worker = beat(self.name_, self.started_at)
                if worker.unhealthy_reason:
                    restart_stuck(worker, batch_id)
                else:
                    # systemd's watchdog hears from a worker only while it is healthy.
                    sdnotify.notify("WATCHDOG=1" if ready else "READY=1\nWATCHDOG=1")
                    ready = True
                for command in pending_commands(self.name_):
                    carry_out(command)
                wake_for_free_ranges()
            except Exception:
                logger.exception("heartbeat failed")
            finally:
                close_old_connections()
            self.wake_event.wait(self.interval)
            self.wake_event.clear()

    def stop(self):
        self.stop_event.set()
        self.wake_event.set()
