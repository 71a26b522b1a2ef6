"""Putting a batch on the django-q2 queue, where a worker's task runs it.

The task is named by its dotted path, so jobs never imports the worker code."""

from django_q.tasks import async_task

BATCH_TASK = "workers.tasks.process_batch_task"


def enqueue_batch(batch_id):
    return async_task(BATCH_TASK, batch_id, task_name=f"batch {batch_id}", group="batches")
