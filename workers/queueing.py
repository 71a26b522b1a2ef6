"""Putting batches on the django-q2 queue. Imported by the web process: no vLLM here."""

import logging

from django_q.tasks import async_task

logger = logging.getLogger(__name__)


def enqueue_batch(batch_id):
    return async_task("workers.tasks.process_batch_task", batch_id, task_name=f"batch {batch_id}", group="batches")
