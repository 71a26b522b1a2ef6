"""Putting a batch on the django-q2 queue, where a worker's task runs it.

The task is named by its dotted path, so jobs never imports the worker code."""

from django_q.models import Schedule
from django_q.tasks import async_task

BATCH_TASK = "workers.tasks.process_batch_task"


def enqueue_batch(batch_id, hops=0):
    """A wake-up for the batch's arrival (`hops`: how often a node passed it on)."""
    if hops:
        return async_task(BATCH_TASK, batch_id, hops=hops, task_name=f"batch {batch_id}", group="batches")
    return async_task(BATCH_TASK, batch_id, task_name=f"batch {batch_id}", group="batches")


def enqueue_batch_at(batch_id, when):
    """Puts the batch on the queue at `when` (a django-q2 one-off schedule: the
    cluster's scheduler runs about every 30 s), so a failing batch never loops."""
    return Schedule.objects.create(
        name=f"retry {batch_id} at {when.isoformat()}",
        func=BATCH_TASK,
        args=repr(batch_id),
        schedule_type=Schedule.ONCE,
        repeats=1,
        next_run=when,
    )
