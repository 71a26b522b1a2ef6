"""django-q2 entry points (they take ids and call services), and the watchdog's schedule."""

import logging

from django_q.models import Schedule

from jobs import leases

from . import runner, services, state
from .models import WorkerCommand
from .runtime import heartbeat

logger = logging.getLogger(__name__)

WATCHDOG_SCHEDULE = "vllm-batch watchdog"


def process_batch_task(batch_id):
    with state.busy():
        outcome = runner.process_batch(batch_id)
        _clear_gpu_if_asked()
    logger.info("batch %s: %s", batch_id, outcome)
    return outcome


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
    Schedule.objects.update_or_create(
        name=WATCHDOG_SCHEDULE,
        defaults={
            "func": "workers.tasks.watchdog_task",
            "schedule_type": Schedule.MINUTES,
            "minutes": minutes,
            "repeats": -1,
        },
    )
