"""workers.tasks: the django-q2 entry points, stopping a worker between chunks, the watchdog's schedule."""

from datetime import timedelta

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


def test_a_wake_up_runs_the_batch_first_in_the_queue_then_the_rest(user, chat_model, engine):
    normal = make_batch(user, [chat_request("a")])
    urgent = make_batch(user, [chat_request("b")], metadata={"priority": "1"})
    assert process_batch_task(normal.pk) == "completed, completed"
    normal.refresh_from_db()
    urgent.refresh_from_db()
    assert (normal.status, urgent.status) == ("completed", "completed")
    assert urgent.in_progress_at <= normal.in_progress_at
    # The urgent batch's own wake-up finds nothing left.
    assert process_batch_task(urgent.pk) == "skipped"


def test_a_task_stops_taking_batches_when_the_worker_is_wanted_elsewhere(user, chat_model, engine, monkeypatch):
    first, second = make_batch(user, [chat_request("a")]), make_batch(user, [chat_request("b")])
    monkeypatch.setattr("workers.state.handback_requested", lambda: True)
    assert process_batch_task(first.pk) == "completed"
    assert Batch.objects.get(pk=second.pk).status == "validating"


def test_a_task_stops_taking_batches_when_its_slice_is_used_up(user, chat_model, engine, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "TASK_SLICE_SECONDS": 0}
    first, second = make_batch(user, [chat_request("a")]), make_batch(user, [chat_request("b")])
    assert process_batch_task(first.pk) == "completed"
    assert Batch.objects.get(pk=second.pk).status == "validating"


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
    # One wake-up runs both: a swap for the first, the same model again for the second.
    assert process_batch_task(first.pk) == "completed, completed"
    worker.refresh_from_db()
    assert worker.model_swaps == 1
    assert Batch.objects.get(pk=second.pk).status == "completed"


def online_worker(name, state):
    now = timezone.now()
    return Worker.objects.create(name=name, hostname="h", pid=1, started_at=now, last_seen=now, state=state)


def test_a_labelled_node_passes_a_wake_up_on_to_an_idle_worker_a_few_times(
    user, chat_model, engine, settings, monkeypatch
):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "NODE_MODELS": frozenset({"another-model"})}
    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", lambda batch_id, hops=0: queued.append((batch_id, hops)))
    monkeypatch.setattr("workers.models.Worker.freshness", lambda worker, now=None: Worker.Freshness.ONLINE)
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(status="in_progress", model=chat_model.name)

    assert process_batch_task(batch.pk) == "skipped"
    assert queued == []  # no other worker is idle: the batch waits for its node or the watchdog
    online_worker(leases.holder_name(), "idle")
    busy = online_worker("elsewhere@x:1", "processing")
    assert process_batch_task(batch.pk) == "skipped"
    assert queued == []
    Worker.objects.filter(pk=busy.pk).update(state="idle")
    assert process_batch_task(batch.pk, hops=1) == "skipped"
    assert queued == [(batch.pk, 2)]
    assert process_batch_task(batch.pk, hops=3) == "skipped"
    assert queued == [(batch.pk, 2)]  # at most three hops
    assert Batch.objects.get(pk=batch.pk).status == "in_progress"


def test_a_model_held_by_an_idle_worker_elsewhere_is_left_to_it_and_it_is_woken(
    user, chat_model, engine, settings, monkeypatch
):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "AFFINITY_WAIT_SECONDS": 60.0}
    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", lambda batch_id, hops=0: queued.append((batch_id, hops)))
    monkeypatch.setattr("workers.models.Worker.freshness", lambda worker, now=None: Worker.Freshness.ONLINE)
    elsewhere = online_worker("elsewhere@x:1", "idle")
    Worker.objects.filter(pk=elsewhere.pk).update(current_model=chat_model.name)
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(status="in_progress", model=chat_model.name)

    assert process_batch_task(batch.pk) == "skipped"
    assert queued == [(batch.pk, 1)]  # passed on, for the idle worker holding the model
    assert engine.requested == []
    # Past the affinity wait, this worker takes it after all.
    Batch.objects.filter(pk=batch.pk).update(queued_at=timezone.now() - timedelta(seconds=61))
    assert process_batch_task(batch.pk) == "completed"


def test_a_worker_that_takes_one_batch_passes_a_wake_up_on_for_the_rest(user, chat_model, engine, monkeypatch):
    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", lambda batch_id, hops=0: queued.append((batch_id, hops)))
    monkeypatch.setattr("workers.models.Worker.freshness", lambda worker, now=None: Worker.Freshness.ONLINE)
    first = make_batch(user, [chat_request("a")])
    make_batch(user, [chat_request("b")])
    assert process_batch_task(first.pk) == "completed, completed"
    assert queued == []  # nobody else idle: this worker ran both
    online_worker("elsewhere@x:1", "idle")
    third = make_batch(user, [chat_request("c")])
    make_batch(user, [chat_request("d")])
    process_batch_task(third.pk)
    assert queued == [(third.pk, 1)]  # once, before its first batch
