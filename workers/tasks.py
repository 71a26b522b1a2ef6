"""django-q2 entry points (they take ids and call services), and the watchdog's schedule."""

import logging
import time

from django.conf import settings
from django.db import close_old_connections
from django.db.models import F

from batchsite import schedules
from jobs import leases, queueing
from jobs.models import Batch

from . import runner, selectors, services, state
from .engine import host as engine_host
from .models import Worker, WorkerCommand
from .runtime import heartbeat

logger = logging.getLogger(__name__)

WATCHDOG_SCHEDULE = "vllm-batch watchdog"


# A labelled node woken for a batch it may not run passes the wake-up on at most
# this many times (see _hand_on).
HAND_ON_HOPS = 3
# Outcomes after which the worker goes on to its next batch in the same task.
ENDED = {"completed", "failed", "cancelled", "expired", "handed on"}


def process_batch_task(batch_id, hops=0):
    """A wake-up, not an assignment: each batch queues one task, and the task runs
    the batches this worker should take now (jobs.leases.claim_next: priority, the
    model its engine holds, age, this node's models), one after another until none
    is left for it, its slice is used up or it is wanted elsewhere; `batch_id` only
    says which batch's arrival woke it. With several nodes a wake-up can reach a
    node that may not take the batch: the node that may take it goes on to it after
    its current batch without a wake-up of its own. Returns the outcomes, "skipped"
    when there was nothing for this worker."""
    with state.busy():
        outcome = _run_batches(batch_id, hops)
        _clear_gpu_if_asked()
    return outcome


def _run_batches(hint, hops):
    slice_ends = time.monotonic() + settings.VLLM_BATCH["TASK_SLICE_SECONDS"]
    outcomes = []
    while True:
        outcome = _run_next(hint)
        if outcome is None:
            break
        outcomes.append(outcome)
        wanted = state.stop_requested.is_set() or state.handback_requested()
        if outcome not in ENDED or wanted or time.monotonic() >= slice_ends:
            break
    if not outcomes:
        logger.info("woken by batch %s: nothing for this worker", hint)
        _hand_on(hint, hops)
        return "skipped"
    return ", ".join(outcomes)


def _run_next(hint):
    """Runs the next batch for this worker; its outcome, None when there is none."""
    holder = leases.holder_name()
    held = engine_host.loaded_model_name()
    allowed = settings.VLLM_BATCH["NODE_MODELS"]
    close_old_connections()
    batch = leases.claim_next(holder, held_model=held, allowed_models=allowed)
    if batch is None:
        return None
    if allowed and batch.status == Batch.Status.VALIDATING and not _validated_for_node(batch, holder, allowed):
        return "handed on"
    outcome = runner.process_batch(batch.pk, holder)
    loaded = engine_host.loaded_model_name()
    if held and loaded and loaded != held:
        # The worker's row has the holder's name; the heartbeat never writes this column.
        Worker.objects.filter(name=holder).update(model_swaps=F("model_swaps") + 1)
    logger.info("batch %s (woken by %s): %s", batch.pk, hint, outcome)
    return outcome


def _hand_on(hint, hops):
    """A labelled node woken while the only batches waiting are of models it may not
    load passes the wake-up on when another worker is idle (it may be one that can
    take them), at most HAND_ON_HOPS times. A busy node that may take them goes on
    to them after its batch by itself; the watchdog requeues what is left."""
    allowed = settings.VLLM_BATCH["NODE_MODELS"]
    if not allowed or hops >= HAND_ON_HOPS or not leases.claimable().exclude(model__in=allowed).exists():
        return
    holder = leases.holder_name()
    if any(w.name != holder and w.state == Worker.State.IDLE for w in selectors.worker_list_online()):
        queueing.enqueue_batch(hint, hops=hops + 1)
        logger.info("woken by batch %s: passed on for a node that may load its model", hint)


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
