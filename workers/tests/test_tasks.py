"""workers.tasks: the django-q2 entry points, stopping a worker between chunks, the watchdog's schedule."""

import pytest
from django.utils import timezone
from django_q.models import Schedule

from jobs.models import Batch, BatchResult
from jobs.tests.factories import chat_request, dead_holder, make_batch
from workers.state import stop_requested
from workers.tasks import process_batch_task, watchdog_schedule_ensure, watchdog_task


def test_process_batch_task_runs_the_batch(user, chat_model, engine):
    batch = make_batch(user, [chat_request("a")])
    assert process_batch_task(batch.pk) == "completed"
    assert Batch.objects.get(pk=batch.pk).status == "completed"


def test_process_batch_task_on_an_unknown_batch_is_skipped(db, engine):
    assert process_batch_task("batch_nope") == "skipped"


def test_stop_request_saves_the_chunk_requeues_and_exits(user, chat_model, engine, small_chunks, monkeypatch):
    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", queued.append)
    engine.fake(before_result=lambda pulled: stop_requested.set() if pulled == 1 else None)
    batch = make_batch(user, [chat_request(i) for i in "abcde"])

    with pytest.raises(SystemExit):
        process_batch_task(batch.pk)

    batch.refresh_from_db()
    assert batch.status == "in_progress"
    assert batch.claimed_by == ""
    assert batch.completed_requests == 2
    assert sorted(BatchResult.objects.filter(batch=batch).values_list("custom_id", flat=True)) == ["a", "b"]
    assert queued == [batch.pk]


def test_watchdog_task_runs_the_watchdog(user, chat_model, monkeypatch):
    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", queued.append)
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(
        status="in_progress", claimed_by=dead_holder(), heartbeat_at=timezone.now()
    )
    assert watchdog_task() == [batch.pk]


def test_ensure_schedule_keeps_one_schedule(db):
    watchdog_schedule_ensure(1)
    watchdog_schedule_ensure(5)
    (schedule,) = Schedule.objects.filter(name="vllm-batch watchdog")
    assert schedule.func == "workers.tasks.watchdog_task"
    assert schedule.minutes == 5
    assert schedule.repeats == -1
