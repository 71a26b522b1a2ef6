"""django-q2 entry points (they take ids and call services), and the watchdog's schedule."""

import logging
import time

from django.conf import settings
from django.db import close_old_connections
from django.db.models import F

from batchsite import schedules
from jobs import leases, queueing, ranges
from jobs.models import Batch

from . import runner, selectors, services, state
from .engine import host as engine_host
from .models import Worker, WorkerCommand
from .runtime import heartbeat

logger = logging.getLogger(__name__)

WATCHDOG_SCHEDULE = "vllm-batch watchdog"


# A wake-up is passed on to an idle worker at most this many times (see _hand_on).
HAND_ON_HOPS = 3
# Outcomes after which the worker goes on to its next batch in the same task.
ENDED = {"completed", "failed", "cancelled", "expired", "handed on", "helped"}


def process_batch_task(batch_id, hops=0):
    """A wake-up, not an assignment: each batch queues one task, and the task runs
    the batches this worker should take now (jobs.leases.claim_next: priority, the
    model its engine holds, age, this node's models, models idle workers elsewhere
    hold), one after another until none is left for it, its slice is used up or it
    is wanted elsewhere; `batch_id` only says which batch's arrival woke it. With
    several nodes a wake-up can reach a worker that leaves the batch to another:
    it passes the wake-up on to an idle worker, and a busy one that may take the
    batch goes on to it after its current batch. Returns the outcomes, "skipped"
    when there was nothing for this worker."""
    with state.busy():
        outcome = _run_batches(batch_id, hops)
        _clear_gpu_if_asked()
    return outcome


def _run_batches(hint, hops):
    slice_ends = time.monotonic() + settings.VLLM_BATCH["TASK_SLICE_SECONDS"]
    holder = leases.holder_name()
    outcomes = []
    while True:
        held = engine_host.loaded_model_name()
        batch = _claim_next(holder, held)
        if not outcomes:
            # Once per wake-up, before a batch that may take long: work this worker left waiting goes on.
            _hand_on(hint, hops, holder)
        if batch is None:
            # Nothing to take for itself: ranges of a split batch another worker holds.
            helped = _help(holder, held)
            if helped is None:
                break
            outcome = helped
        else:
            outcome = _run(batch, holder, held, hint)
        outcomes.append(outcome)
        wanted = state.stop_requested.is_set() or state.handback_requested()
        if outcome not in ENDED or wanted or time.monotonic() >= slice_ends:
            break
    if not outcomes:
        logger.info("woken by batch %s: nothing for this worker", hint)
        return "skipped"
    return ", ".join(outcomes)


def _claim_next(holder, held):
    close_old_connections()
    allowed = settings.VLLM_BATCH["NODE_MODELS"]
    return leases.claim_next(holder, held_model=held, allowed_models=allowed, left_for=_held_by_idle_others(holder))


def _run(batch, holder, held, hint):
    allowed = settings.VLLM_BATCH["NODE_MODELS"]
    if allowed and batch.status == Batch.Status.VALIDATING and not _validated_for_node(batch, holder, allowed):
        return "handed on"
    outcome = runner.process_batch(batch.pk, holder)
    loaded = engine_host.loaded_model_name()
    if held and loaded and loaded != held:
        # The worker's row has the holder's name; the heartbeat never writes this column.
        Worker.objects.filter(name=holder).update(model_swaps=F("model_swaps") + 1)
    logger.info("batch %s (woken by %s): %s", batch.pk, hint, outcome)
    return outcome


def _idle_others(holder):
    return selectors.idle_workers(besides=holder)


def _help(holder, held):
    """Runs ranges of a split batch of a model this worker may run (jobs.ranges);
    its outcome, or None when no batch has one to take."""
    batch_id = ranges.helpable(allowed_models=settings.VLLM_BATCH["NODE_MODELS"], held_model=held)
    if batch_id is None:
        return None
    outcome = runner.help_batch(batch_id)
    logger.info("batch %s: helped with its ranges (%s)", batch_id, outcome)
    return outcome


def _held_by_idle_others(holder):
    """Models that idle workers elsewhere hold: their batches are left to them for
    VLLM_BATCH_AFFINITY_WAIT_SECONDS (affinity across nodes), so no engine loads a
    model another one holds idle."""
    return {w.current_model for w in _idle_others(holder) if w.current_model}


def _hand_on(hint, hops, holder):
    """Batches still waiting after this worker's pick (left to others, or more than
    one worker can run) get a wake-up passed on when another worker is idle, at
    most HAND_ON_HOPS times, so two nodes never toss one back and forth. A busy
    node goes on to them after its batch by itself; the watchdog requeues the rest."""
    waiting = leases.claimable().exists() or ranges.helpable() is not None
    if hops >= HAND_ON_HOPS or not waiting or not _idle_others(holder):
        return
    queueing.enqueue_batch(hint, hops=hops + 1)
    logger.info("woken by batch %s: batches still wait, passed on to an idle worker", hint)


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
