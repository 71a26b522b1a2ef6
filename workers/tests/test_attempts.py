"""Poison batches: an unexpected exception in validating or processing counts an
attempt; the batch is retried after a backoff, never at once, and ends with the
reason at VLLM_BATCH_MAX_BATCH_ATTEMPTS, finished results kept. Injected faults, no engine."""

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule

from jobs import services
from jobs.models import Batch
from jobs.tests.factories import chat_request, custom_ids, make_batch, read_jsonl
from workers.runner import process_batch
from workers.tests.fakes import EngineStub, echo, prompt_text

HOLDER = "test:1"


@pytest.fixture
def engine(monkeypatch, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "CHUNK_SIZE": 2, "MAX_BATCH_ATTEMPTS": 3}
    stub = EngineStub()
    monkeypatch.setattr("workers.engine.host.engine_for", stub.engine_for)
    return stub


def run(batch):
    outcome = process_batch(batch.pk, holder=HOLDER)
    batch.refresh_from_db()
    return outcome


def retries(batch):
    return list(Schedule.objects.filter(func="workers.tasks.process_batch_task", args=repr(batch.pk)).order_by("pk"))


def test_a_validation_that_raises_is_retried_with_backoff_then_fails_with_the_reason(
    user, chat_model, engine, monkeypatch
):
    def broken_parser(*args, **kwargs):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "the parser blew up")

    monkeypatch.setattr(services, "validate_input", broken_parser)
    batch = make_batch(user, [chat_request("a")])

    started = timezone.now()
    assert run(batch) == "retrying"
    assert (batch.status, batch.attempts, batch.claimed_by) == ("validating", 1, "")
    assert "the parser blew up" in batch.last_attempt_error
    [first] = retries(batch)
    # Not at once: the next try is scheduled after the backoff.
    assert first.next_run >= started + timedelta(seconds=services.RETRY_SECONDS)
    assert first.schedule_type == Schedule.ONCE

    assert run(batch) == "retrying"
    second = retries(batch)[-1]
    assert second.next_run >= started + timedelta(seconds=2 * services.RETRY_SECONDS)

    assert run(batch) == "failed"
    assert (batch.status, batch.attempts) == ("failed", 3)
    [error] = batch.errors
    assert error["code"] == "batch_failed"
    assert "3 times" in error["message"] and "the parser blew up" in error["message"]
    assert len(retries(batch)) == 2
    # A late duplicate task finds the batch finished and does nothing.
    assert run(batch) == "skipped"


def test_a_processing_error_ends_the_batch_completed_with_the_rest_in_the_error_file(
    settings, user, chat_model, engine
):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "RUN_ORDER_LOOKAHEAD": 0}  # file order: a, b come before the poison

    def poison(item):
        if "poison" in prompt_text(item):
            raise RuntimeError("a bug in the response builder")
        return echo(item)

    engine.fake(respond=poison)
    ids = ["a", "b", "poison", "d", "e"]
    batch = make_batch(user, [chat_request(i, content=f"{i} question") for i in ids])

    outcomes = [run(batch) for _ in range(3)]

    assert outcomes == ["retrying", "retrying", "completed"]
    assert batch.status == "completed"
    assert batch.attempts == 3
    output, errors = read_jsonl(batch.output_file_id), read_jsonl(batch.error_file_id)
    # What finished before the poison request is kept; every custom_id once.
    assert custom_ids(output) == ["a", "b"]
    assert Counter(custom_ids(output) + custom_ids(errors)) == Counter(ids)
    assert {e["error"]["code"] for e in errors} == {"batch_failed"}
    assert "a bug in the response builder" in errors[0]["error"]["message"]
    assert (batch.completed_requests, batch.failed_requests) == (2, 3)


def test_a_batch_whose_attempts_are_used_up_ends_when_a_worker_takes_it(user, chat_model, engine):
    batch = make_batch(user, [chat_request(i) for i in ("a", "b")])
    Batch.objects.filter(pk=batch.pk).update(attempts=3, last_attempt_error="stuck: no progress for 31 min")

    assert run(batch) == "failed"
    assert "stuck: no progress" in batch.errors[0]["message"]
    assert engine.requested == []


def test_an_in_progress_batch_whose_attempts_are_used_up_ends_completed(user, chat_model, engine):
    batch = make_batch(user, [chat_request(i) for i in ("x", "y")])
    services.batch_validate(batch=batch, model_problem=lambda name: None)
    Batch.objects.filter(pk=batch.pk).update(attempts=3, last_attempt_error="stuck")

    assert run(batch) == "completed"
    assert sorted(custom_ids(read_jsonl(batch.error_file_id))) == ["x", "y"]
    assert engine.requested == []
