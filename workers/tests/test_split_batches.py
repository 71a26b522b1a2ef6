"""A batch split into ranges (jobs.ranges) run by the worker that holds it and by
helpers (workers.runner.help_batch, workers.tasks), with a fake engine."""

import datetime
import json

import pytest
from django.utils import timezone

from jobs import ranges
from jobs import services as job_services
from jobs.models import Batch, BatchRange, BatchResult
from jobs.tests.factories import chat_request, custom_ids, make_batch, read_jsonl
from workers import runner, state, tasks
from workers.models import Worker
from workers.runner import help_batch, process_batch, validate_batch
from workers.runtime import heartbeat

HOLDER, HELPER = "node-a:1", "node-b:1"


@pytest.fixture(autouse=True)
def split_by_four(settings, small_chunks):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "SPLIT_REQUESTS": 4}


@pytest.fixture
def no_wakeups(monkeypatch):
    sent = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", lambda batch_id, hops=0: sent.append(batch_id))
    return sent


def validated(user, count):
    batch = make_batch(user, [chat_request(f"r{i}", content=f"question {i}") for i in range(count)])
    assert validate_batch(batch, None)
    batch.refresh_from_db()
    return batch


def done_by(batch):
    return dict(BatchRange.objects.filter(batch=batch).values_list("first_line", "done_by"))


def assert_complete_in_order(batch, count):
    batch.refresh_from_db()
    assert batch.status == "completed"
    output = read_jsonl(batch.output_file_id)
    assert custom_ids(output) == [f"r{i}" for i in range(count)]
    assert [line["response"]["body"]["choices"][0]["message"]["content"] for line in output] == [
        f"re: question {i}" for i in range(count)
    ]
    assert (batch.completed_requests, batch.failed_requests) == (count, 0)
    assert batch.output_tokens == 2 * count


def test_the_holder_alone_runs_every_range_and_finalizes(user, chat_model, engine, no_wakeups):
    batch = validated(user, 10)
    assert process_batch(batch.pk, holder=HOLDER) == "completed"
    assert_complete_in_order(batch, 10)
    assert done_by(batch) == {1: HOLDER, 5: HOLDER, 9: HOLDER}
    assert engine.fake().lines == list(range(1, 11))


def test_the_holder_waits_for_a_range_another_worker_runs_then_finalizes(
    user, chat_model, engine, no_wakeups, monkeypatch
):
    batch = validated(user, 10)
    ranges.split(batch)
    taken = ranges.claim(batch.pk, HELPER)  # lines 1-4: another node has them
    waits = []

    def other_worker_saves(seconds):
        # While the holder waits, the helper saves its range (as its own chunks would).
        waits.append(seconds)
        if len(waits) == 2:
            rows = [
                (line, f"r{line - 1}", False, json.dumps({"custom_id": f"r{line - 1}", "n": line}), 1, 2)
                for line in range(taken.first_line, taken.end_line)
            ]
            job_services.batch_results_save(batch_id=batch.pk, holder=HELPER, rows=rows, in_ranges=True)

    monkeypatch.setattr("workers.runner.time.sleep", other_worker_saves)
    assert process_batch(batch.pk, holder=HOLDER) == "completed"

    assert len(waits) == 2
    assert engine.fake().lines == list(range(5, 11))  # never the helper's lines
    assert done_by(batch) == {1: HELPER, 5: HOLDER, 9: HOLDER}
    batch.refresh_from_db()
    output = read_jsonl(batch.output_file_id)
    assert custom_ids(output) == [f"r{i}" for i in range(10)]  # input order, each once
    assert [line.get("n") for line in output[:4]] == [1, 2, 3, 4]


def test_a_helper_runs_free_ranges_and_leaves_finalizing_to_the_holder(user, chat_model, engine, no_wakeups):
    batch = validated(user, 10)
    ranges.split(batch)
    ranges.claim(batch.pk, HOLDER)  # the holder is on lines 1-4
    Batch.objects.filter(pk=batch.pk).update(claimed_by=HOLDER, heartbeat_at=timezone.now())

    assert help_batch(batch.pk, holder=HELPER) == "helped"

    batch.refresh_from_db()
    assert batch.status == "in_progress"
    assert batch.claimed_by == HOLDER
    assert done_by(batch) == {1: "", 5: HELPER, 9: HELPER}
    assert batch.completed_requests == 6
    assert sorted(BatchResult.objects.filter(batch=batch).values_list("line", flat=True)) == list(range(5, 11))


def test_a_helper_stops_at_a_cancel_and_frees_its_range(user, chat_model, engine, no_wakeups):
    batch = validated(user, 10)
    ranges.split(batch)

    def cancel_midway(pulled):
        if pulled == 3:
            Batch.objects.filter(pk=batch.pk).update(status="cancelling")

    engine.fake(before_result=cancel_midway)
    assert help_batch(batch.pk, holder=HELPER) == "helped"
    # The chunk in flight when the cancel came was saved (lines 3-4: its range is done); no more.
    assert not BatchRange.objects.filter(batch=batch).exclude(claimed_by="").exists()
    assert ranges.left(batch.pk) == 2
    assert BatchResult.objects.filter(batch=batch).count() == 4


def test_help_is_skipped_for_a_batch_that_is_not_split_or_not_running(user, chat_model, engine, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "SPLIT_REQUESTS": 0}
    batch = validated(user, 10)
    assert help_batch(batch.pk, holder=HELPER) == "skipped"
    Batch.objects.filter(pk=batch.pk).update(status="completed")
    assert help_batch(batch.pk, holder=HELPER) == "skipped"


def test_a_cancel_while_the_holder_waits_for_others_ends_the_batch_cancelled(
    user, chat_model, engine, no_wakeups, monkeypatch
):
    batch = validated(user, 10)
    ranges.split(batch)
    ranges.claim(batch.pk, HELPER)
    monkeypatch.setattr(
        "workers.runner.time.sleep",
        lambda seconds: Batch.objects.filter(pk=batch.pk).update(status="cancelling"),
    )
    assert process_batch(batch.pk, holder=HOLDER) == "cancelled"
    batch.refresh_from_db()
    assert batch.status == "cancelled"
    assert batch.completed_requests == 6


def test_the_holders_wait_is_bounded_by_its_task_slice(user, chat_model, engine, no_wakeups, monkeypatch, settings):
    batch = validated(user, 10)
    ranges.split(batch)
    ranges.claim(batch.pk, HELPER)
    now = [0.0]
    monkeypatch.setattr("workers.runner.time.monotonic", lambda: now[0])
    monkeypatch.setattr("workers.runner.time.sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "TASK_SLICE_SECONDS": 30}

    assert process_batch(batch.pk, holder=HOLDER) == "continued"

    assert 30 <= now[0] <= 32
    assert no_wakeups.count(batch.pk) == 1  # its continuation
    batch.refresh_from_db()
    assert (batch.status, batch.claimed_by) == ("in_progress", "")
    assert BatchRange.objects.get(batch=batch, first_line=1).claimed_by == HELPER  # the helper's own


def test_a_split_batch_wakes_two_per_idle_worker_elsewhere(user, chat_model, engine, no_wakeups, monkeypatch):
    batch = validated(user, 10)
    monkeypatch.setattr("workers.selectors.idle_workers", lambda besides="": ["w2"] if besides == HOLDER else [])
    assert process_batch(batch.pk, holder=HOLDER) == "completed"
    assert no_wakeups == [batch.pk, batch.pk]


def test_a_worker_with_nothing_to_claim_helps_with_a_split_batch(user, chat_model, engine, no_wakeups, monkeypatch):
    batch = validated(user, 10)
    ranges.split(batch)
    Batch.objects.filter(pk=batch.pk).update(claimed_by=HOLDER, heartbeat_at=timezone.now())
    monkeypatch.setattr("jobs.leases.holder_name", lambda: HELPER)

    assert tasks.process_batch_task(batch.pk) == "helped"

    assert ranges.left(batch.pk) == 0
    assert set(done_by(batch).values()) == {HELPER}
    assert tasks.process_batch_task(batch.pk) == "skipped"  # nothing left to take


@pytest.fixture
def worker_state():
    before = state.get()
    yield
    state.set_state(before["state"], before["batch_id"])


def test_an_idle_workers_heartbeat_asks_for_a_wake_up_while_ranges_are_free(user, chat_model, no_wakeups, worker_state):
    batch = validated(user, 10)
    state.set_state(Worker.State.IDLE)
    assert heartbeat.wake_for_free_ranges() is None  # not split
    ranges.split(batch)
    Batch.objects.filter(pk=batch.pk).update(claimed_by=HOLDER, heartbeat_at=timezone.now())
    assert heartbeat.wake_for_free_ranges() == batch.pk
    assert no_wakeups == [batch.pk]
    state.set_state(Worker.State.PROCESSING, "other")
    assert heartbeat.wake_for_free_ranges() is None  # busy: it goes on by itself after
    state.set_state(Worker.State.IDLE)
    for _ in range(3):
        ranges.claim(batch.pk, HOLDER)
    assert heartbeat.wake_for_free_ranges() is None  # every range taken
    assert no_wakeups == [batch.pk]


def test_a_holder_that_died_leaves_its_ranges_to_the_next(user, chat_model, engine, no_wakeups):
    batch = validated(user, 10)
    ranges.split(batch)
    ranges.claim(batch.pk, "gone:1")
    BatchRange.objects.filter(claimed_by="gone:1").update(heartbeat_at=timezone.now() - datetime.timedelta(days=1))
    assert process_batch(batch.pk, holder=HOLDER) == "completed"
    assert_complete_in_order(batch, 10)
    assert runner.RANGE_WAIT_SECONDS > 0
