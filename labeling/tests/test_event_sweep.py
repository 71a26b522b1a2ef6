"""The sweep schedule: events left `received` (the web process died before
processing them, or processing is off) are processed a few seconds later,
oldest first, a bounded number per run."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule

from labeling import events, tasks
from labeling.models import LabelingTask, WebhookEvent

from .deliveries import body, raw

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def nothing_processes(monkeypatch):
    """As when the web process dies right after answering: stored, never processed."""
    monkeypatch.setattr(events, "_enqueue", lambda event_id: None)


def received(name, seconds_ago):
    event = events.event_receive(body=raw(body(name)), source=WebhookEvent.Source.WEBHOOK)
    WebhookEvent.objects.filter(pk=event.pk).update(created_at=timezone.now() - timedelta(seconds=seconds_ago))
    return event.pk


def statuses(*ids):
    return [WebhookEvent.objects.get(pk=pk).status for pk in ids]


def test_the_sweep_processes_events_left_received_oldest_first():
    created = received("webhook_TASKS_CREATED.json", 120)
    annotated = received("webhook_ANNOTATION_CREATED.json", 60)
    fresh = received("webhook_TASKS_DELETED.json", 0)  # may still be on its way through the web process
    assert events.events_sweep() == 2
    assert statuses(created, annotated, fresh) == ["processed", "processed", "received"]
    assert LabelingTask.objects.filter(deleted_at=None).count() == 3  # the annotation found its task
    assert events.events_sweep() == 0
    assert WebhookEvent.objects.get(pk=created).attempts == 1


def test_each_run_is_bounded():
    ids = [received("webhook_TASKS_CREATED.json", 60 - i) for i in range(3)]
    assert events.events_sweep(limit=2) == 2
    assert statuses(*ids) == ["processed", "processed", "received"]
    assert events.events_sweep(limit=2) == 1
    assert statuses(*ids) == ["processed"] * 3


def test_failed_and_processed_events_are_left_alone():
    failed = received("webhook_TASKS_DELETED.json", 60)  # names project 1, unknown here
    WebhookEvent.objects.filter(pk=failed).update(status="failed", error="earlier", attempts=1)
    done = received("webhook_TASKS_CREATED.json", 60)
    events.event_process(event_id=done)
    assert events.events_sweep() == 0
    failed_event = WebhookEvent.objects.get(pk=failed)
    assert (failed_event.status, failed_event.error, failed_event.attempts) == ("failed", "earlier", 1)


def test_the_schedule_runs_the_sweep():
    received("webhook_TASKS_CREATED.json", 60)
    (schedule,) = Schedule.objects.filter(name=tasks.EVENT_SWEEP_SCHEDULE)  # made by migrate
    assert schedule.func == "labeling.tasks.sweep_events"
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == (Schedule.MINUTES, 1, -1)
    assert tasks.sweep_events() == "1 event(s) processed"


def test_ensuring_the_schedule_again_keeps_one():
    tasks.event_sweep_schedule_ensure(1)
    tasks.event_sweep_schedule_ensure(2)
    (schedule,) = Schedule.objects.filter(name=tasks.EVENT_SWEEP_SCHEDULE)
    assert schedule.minutes == 2


class ProcessDied(BaseException):
    """Stands in for the process dying mid-event: nothing catches it, the transaction rolls back."""


def test_an_event_that_kills_its_process_is_given_up_after_max_attempts(monkeypatch):
    poison = received("webhook_TASKS_CREATED.json", 60)

    def die(event, payload):
        raise ProcessDied

    monkeypatch.setattr(events, "_apply", die)
    for attempt in range(1, events.MAX_ATTEMPTS + 1):
        with pytest.raises(ProcessDied):
            events.events_sweep()
        event = WebhookEvent.objects.get(pk=poison)
        assert (event.status, event.attempts) == ("received", attempt)  # counted though it rolled back
    assert events.events_sweep() == 1
    event = WebhookEvent.objects.get(pk=poison)
    assert event.status == "failed" and "never finished" in event.error
    assert LabelingTask.objects.count() == 0
    assert events.events_sweep() == 0

    monkeypatch.undo()
    monkeypatch.setattr(events, "_enqueue", lambda event_id: None)
    assert events.events_process_again(events=[event]) == {"processed": 1}  # admin's re-process still runs it
    assert LabelingTask.objects.count() == 3
