"""django-q entry points of the Label Studio loop: each takes an id and calls a service."""

import logging

from batchsite import schedules
from jobs.models import Batch

from . import bulk, evaluation, events, push, training

logger = logging.getLogger(__name__)

EVENT_SWEEP_SCHEDULE = "vllm-batch Label Studio event sweep"


def process_event(event_id):
    """A stored webhook event, processed into the annotation store."""
    return events.event_process(event_id=event_id)


def sweep_events():
    """The schedule's run: events left `received`, processed (a bounded number per run)."""
    return f"{events.events_sweep()} event(s) processed"


def event_sweep_schedule_ensure(minutes=1):
    schedules.ensure_every(EVENT_SWEEP_SCHEDULE, "labeling.tasks.sweep_events", minutes)


def export_training(run_id, owner_id=None):
    """A training run's fine-tuning file."""
    run = training.export(run_id=run_id, owner_id=owner_id)
    return None if run is None else f"{run.status}: {run.examples} examples"


def batch_finished(sender, batch_id, **kwargs):
    """Receiver of jobs.signals.batch_finished (connected in LabelingConfig.ready):
    queues the one task that a finished batch of the Label Studio loop needs, by
    what its metadata says it is; an ordinary batch gets none, and neither does one
    whose owner may not change labeling projects."""
    from django_q.tasks import async_task

    batch = Batch.objects.select_related("owner").filter(pk=batch_id).first()
    if batch is None:
        return None
    if evaluation.is_ground_truth_run(batch):
        func, name = "labeling.evaluation.store_task", f"store ground truth {batch_id}"
    elif bulk.pushes_when_done(batch):
        func, name = "labeling.bulk.push_task", f"store predictions of {batch_id} in Label Studio"
    elif push.is_user_push(batch):
        func, name = "labeling.push.push_task", f"push {batch_id} to Label Studio"
    else:
        return None
    if not bulk.may_write_to_label_studio(batch.owner):
        logger.warning(
            "batch %s names a Label Studio project but its owner %s lacks labeling.change_labelingproject: not pushed",
            batch_id,
            batch.owner,
        )
        return None
    return async_task(func, batch_id, task_name=name)
