"""Writes: the model registry, the operator's commands to workers, workers found
dead (lost) and pruned, and the watchdog's own record."""

import logging
import socket
import time
from datetime import timedelta

import psutil
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import RegisteredModel, Supervisor, Worker, WorkerCommand
from .processes import kill_all

logger = logging.getLogger(__name__)


@transaction.atomic
def model_register(*, name, path, runner=RegisteredModel.Runner.GENERATE, **engine_fields):
    """Creates or updates the model `name`; returns (model, created)."""
    fields = {"path": str(path), "runner": runner, "is_active": True}
    fields.update({k: v for k, v in engine_fields.items() if v is not None})
    model, created = RegisteredModel.objects.update_or_create(name=name, defaults=fields)
    model.full_clean()
    return model, created


def command_create(*, worker, action, requested_by=""):
    """Queues an order for a worker; it acts within one heartbeat."""
    return WorkerCommand.objects.create(worker=worker, action=action, requested_by=requested_by)


def command_wait(*, command, timeout):
    """Waits (bounded) for the worker to finish the command; returns it refreshed."""
    deadline = time.monotonic() + timeout
    while True:
        command.refresh_from_db()
        if command.is_finished or time.monotonic() >= deadline:
            return command
        time.sleep(0.25)


def worker_kill(*, worker, requested_by="", wait=None):
    """Kill through the database first; a worker on this host that does not answer
    within `wait` seconds (a hung worker) is killed with signals, process tree and all.
    Returns (command, how) where how is 'command', 'signal' or 'pending'."""
    wait = settings.VLLM_BATCH["HEARTBEAT_SECONDS"] * 1.5 if wait is None else wait
    command = command_create(worker=worker, action=WorkerCommand.Action.KILL, requested_by=requested_by)
    command = command_wait(command=command, timeout=wait)
    if command.is_finished:
        return command, "command"
    if not worker.is_local():
        return command, "pending"
    try:
        root = psutil.Process(worker.pid)
        # A pid taken over by another process since the worker started is not ours to kill.
        ours = root.create_time() <= worker.started_at.timestamp() + 5
        processes = [*root.children(recursive=True), root] if ours else []
    except psutil.NoSuchProcess:
        processes = []
    kill_all(processes, timeout=10)
    if processes:
        result = f"no answer within {wait:.0f} s: killed pid {worker.pid} and its children with SIGKILL"
    else:
        result = f"no answer within {wait:.0f} s: process {worker.pid} is already gone"
    WorkerCommand.objects.filter(pk=command.pk).update(
        status=WorkerCommand.Status.DONE, result=result, finished_at=timezone.now()
    )
    Worker.objects.filter(pk=worker.pk).update(state=Worker.State.STOPPED)
    command.refresh_from_db()
    return command, "signal"


# -- workers found dead, and old rows ------------------------------------------

GONE_STATES = (Worker.State.STOPPED, Worker.State.LOST)


def workers_mark_lost(*, queryset, reason, now=None):
    """Marks the workers in `queryset` that were not stopped cleanly as lost, with why; returns how many."""
    now = now or timezone.now()
    return queryset.exclude(state__in=GONE_STATES).update(
        state=Worker.State.LOST, lost_at=now, lost_reason=reason[:500], current_batch=None, updated_at=now
    )


def workers_reap(*, now=None):
    """Marks dead workers lost (their process is gone from this host, or no beat
    for 6 intervals) and deletes rows stopped or lost longer than
    VLLM_BATCH_WORKER_PRUNE_HOURS; their commands stay. Returns (lost, pruned)."""
    now = now or timezone.now()
    interval = settings.VLLM_BATCH["HEARTBEAT_SECONDS"]
    lost = 0
    for worker in Worker.objects.exclude(state__in=GONE_STATES):
        age = (now - worker.last_seen).total_seconds()
        if not worker.process_may_run():
            reason = "its process is gone (killed, or crashed)"
        elif age > 6 * interval:
            reason = f"no heartbeat for {age:.0f} s"
        else:
            continue
        lost += workers_mark_lost(queryset=Worker.objects.filter(pk=worker.pk), reason=reason, now=now)
        logger.warning("worker %s is lost: %s", worker.name, reason)
    horizon = now - timedelta(hours=settings.VLLM_BATCH["WORKER_PRUNE_HOURS"])
    pruned, _ = Worker.objects.filter(state__in=GONE_STATES, last_seen__lt=horizon).delete()
    Supervisor.objects.filter(state=Supervisor.State.STOPPED, last_check__lt=horizon).delete()
    return lost, pruned


# -- the watchdog's record ------------------------------------------------------


def supervisor_start(*, pid, cluster_name):
    now = timezone.now()
    hostname = socket.gethostname()
    supervisor, _ = Supervisor.objects.update_or_create(
        name=f"{hostname}:{pid}",
        defaults={
            "hostname": hostname,
            "pid": pid,
            "cluster_name": cluster_name,
            "state": Supervisor.State.RUNNING,
            "restarts": 0,
            "last_reason": "",
            "last_restart_at": None,
            "started_at": now,
            "last_check": now,
        },
    )
    return supervisor


def supervisor_update(supervisor, **fields):
    fields["last_check"] = timezone.now()
    Supervisor.objects.filter(pk=supervisor.pk).update(**fields)
    for name, value in fields.items():
        setattr(supervisor, name, value)
