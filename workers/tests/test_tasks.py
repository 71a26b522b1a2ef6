"""workers.tasks: the django-q2 entry points, and stopping a worker between chunks."""

import pytest

from jobs.models import Batch, BatchResult
from jobs.tests.factories import chat_request, make_batch
from workers.lifecycle import stop_requested
from workers.tasks import process_batch_task


def test_process_batch_task_runs_the_batch(user, chat_model, engine):
    batch = make_batch(user, [chat_request("a")])
    assert process_batch_task(batch.pk) == "completed"
    assert Batch.objects.get(pk=batch.pk).status == "completed"


def test_process_batch_task_on_an_unknown_batch_is_skipped(db, engine):
    assert process_batch_task("batch_nope") == "skipped"


def test_stop_request_saves_the_chunk_requeues_and_exits(user, chat_model, engine, small_chunks, monkeypatch):
    queued = []
    monkeypatch.setattr("workers.queueing.enqueue_batch", queued.append)
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
