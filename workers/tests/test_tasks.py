"""workers.tasks: the django-q2 entry points, stopping a worker between chunks, the watchdog's schedule."""

import pytest
from django.utils import timezone
from django_q.models import Schedule

from jobs import leases
from jobs.models import Batch, BatchResult
from jobs.tests.factories import chat_request, dead_holder, make_batch
from workers.models import Worker
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


# -- dispatch: a task is a wake-up, the worker picks the batch -----------------------


def test_a_wake_up_runs_the_batch_first_in_the_queue(user, chat_model, engine):
    normal = make_batch(user, [chat_request("a")])
    urgent = make_batch(user, [chat_request("b")], metadata={"priority": "1"})
    assert process_batch_task(normal.pk) == "completed"
    assert Batch.objects.get(pk=urgent.pk).status == "completed"
    assert Batch.objects.get(pk=normal.pk).status == "validating"
    # The urgent batch's own wake-up runs the other one: one wake-up per batch.
    assert process_batch_task(urgent.pk) == "completed"
    assert Batch.objects.get(pk=normal.pk).status == "completed"
    assert process_batch_task(urgent.pk) == "skipped"


def test_a_node_hands_on_a_batch_of_a_model_outside_its_labels(user, chat_model, engine, settings, monkeypatch):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "NODE_MODELS": frozenset({"another-model"})}
    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", queued.append)
    batch = make_batch(user, [chat_request("a")])

    assert process_batch_task(batch.pk) == "handed on"
    batch.refresh_from_db()
    assert (batch.status, batch.model, batch.claimed_by) == ("in_progress", chat_model.name, "")
    assert queued == [batch.pk]
    assert engine.requested == []
    # Its next wake-up on this node finds nothing to take: the batch waits for a node that may load it.
    assert process_batch_task(batch.pk) == "skipped"
    assert Batch.objects.get(pk=batch.pk).status == "in_progress"


def test_swaps_are_counted_on_the_worker_row(user, chat_model, engine, monkeypatch):
    held = {"name": "another-model"}
    monkeypatch.setattr(
        "workers.engine.host.loaded_model_name", lambda: engine.requested[-1] if engine.requested else held["name"]
    )
    now = timezone.now()
    worker = Worker.objects.create(
        name=leases.holder_name(), hostname="h", pid=1, started_at=now, last_seen=now, state="idle"
    )
    first, second = make_batch(user, [chat_request("a")]), make_batch(user, [chat_request("b")])
    assert process_batch_task(first.pk) == "completed"
    worker.refresh_from_db()
    assert worker.model_swaps == 1
    # The same model again: no swap.
    assert process_batch_task(second.pk) == "completed"
    worker.refresh_from_db()
    assert worker.model_swaps == 1
