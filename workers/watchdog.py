"""Finds batches no live worker holds and puts them back on the queue."""

import logging

from django.db.models import Q
from django.utils import timezone

from jobs.models import Batch

from .queueing import enqueue_batch
from .runner import _stale_before, reap_dead_leases

logger = logging.getLogger(__name__)


def stale_batches():
    """Active batches whose lease is free or stale and whose task may be lost
    (a worker killed mid-batch, a broker that lost the message)."""
    quiet_since = _stale_before()
    return Batch.objects.filter(status__in=Batch.ACTIVE).filter(
        Q(heartbeat_at__lt=quiet_since) | Q(heartbeat_at=None, updated_at__lt=quiet_since)
    )


def requeue_stale_batches():
    freed = reap_dead_leases()
    ids = sorted(set(freed) | set(stale_batches().values_list("pk", flat=True)))
    for batch_id in ids:
        logger.warning("requeueing stale batch %s", batch_id)
        Batch.objects.filter(pk=batch_id).update(updated_at=timezone.now())
        enqueue_batch(batch_id)
    return ids


def ensure_schedule(minutes):
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="vllm-batch watchdog",
        defaults={
            "func": "workers.tasks.watchdog_task",
            "schedule_type": Schedule.MINUTES,
            "minutes": minutes,
            "repeats": -1,
        },
    )
