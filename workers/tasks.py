"""django-q2 entry points (they take ids and call services), and the watchdog's schedule."""

import logging

from django.conf import settings
from django.db import close_old_connections
from django.db.models import F

from batchsite import schedules
from jobs import leases, queueing
from jobs.models import Batch

from . import runner, services, state
from .engine import host as engine_host
from .models import Worker, WorkerCommand
from .runtime import heartbeat

logger = logging.getLogger(__name__)

WATCHDOG_SCHEDULE = "vllm-batch watchdog"


def process_batch_task(batch_id):
    """A wake-up, not an assignment: each batch queues one task, and the task runs
    the batch this worker should take now (jobs.leases.claim_next: priority, the
    model its engine holds, age, this node's models), which may be another one;
    `batch_id` only says which batch's arrival woke it. Returns "skipped" when
    there was nothing for this worker."""
    with state.busy():
        outcome = _run_next(batch_id)
        _clear_gpu_if_asked()
    return outcome


def _run_next(hint):
    holder = leases.holder_name()
    held = engine_host.loaded_model_name()
    allowed = settings.VLLM_BATCH["NODE_MODELS"]
    close_old_connections()
    batch = leases.claim_next(holder, held_model=held, allowed_models=allowed)
    if batch is None:
        logger.info("woken by batch %s: nothing for this worker", hint)
        return "skipped"
    if allowed and batch.status == Batch.Status.VALIDATING and not _validated_for_node(batch, holder, allowed):
        return "handed on"
    outcome = runner.process_batch(batch.pk, holder)
    loaded = engine_host.loaded_model_name()
    if held and loaded and loaded != held:
        # The worker's row has the holder's name; the heartbeat never writes this column.
        Worker.objects.filter(name=holder).update(model_swaps=F("model_swaps") + 1)
    logger.info("batch %s (woken by %s): %s", batch.pk, hint, outcome)
    return outcome


def _validated_for_node(batch, holder, allowed):
    """A batch's model is known once validated: a node whose labels leave it out
    validates the batch and hands it back on the queue for a node that may load it."""
    try:
        with leases.LeaseKeeper(batch.pk, holder):
            runner.validate_batch(batch, holder)
    except Exception:
        # The runner validates again, counting the failed attempt as it does.
        return True
    batch.refresh_from_db()
    if batch.status != Batch.Status.IN_PROGRESS or batch.model in allowed:
        return True
    leases.release(batch.pk, holder)
    queueing.enqueue_batch(batch.pk)
    logger.info("batch %s: model %s is not among this node's models; handed on", batch.pk, batch.model)
    return False


def _clear_gpu_if_asked():
    command_id = state.handback["clear_gpu"]
    if command_id:
        heartbeat.clear_gpu(WorkerCommand.objects.get(pk=command_id))


def watchdog_task():
    """Puts batches whose worker died or went quiet back on the queue; marks dead
    workers lost and prunes old rows."""
    services.workers_reap()
    return leases.requeue_stale_batches()


def watchdog_schedule_ensure(minutes):
    schedules.ensure_every(WATCHDOG_SCHEDULE, "workers.tasks.watchdog_task", minutes)
