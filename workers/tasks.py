"""django-q2 entry points. They take ids and call services."""

import logging

from .lifecycle import busy

logger = logging.getLogger(__name__)


def process_batch_task(batch_id):
    from .runner import process_batch

    with busy():
        outcome = process_batch(batch_id)
        _clear_gpu_if_asked()
    logger.info("batch %s: %s", batch_id, outcome)
    return outcome


def _clear_gpu_if_asked():
    from . import state
    from .heartbeat import clear_gpu
    from .models import WorkerCommand

    command_id = state.handback["clear_gpu"]
    if command_id:
        clear_gpu(WorkerCommand.objects.get(pk=command_id))


def watchdog_task():
    from .watchdog import requeue_stale_batches

    return requeue_stale_batches()
