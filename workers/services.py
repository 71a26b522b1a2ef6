"""Writes: the model registry, and the operator's commands to workers."""

import time

import psutil
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import RegisteredModel, Worker, WorkerCommand
from .processes import kill_all


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
