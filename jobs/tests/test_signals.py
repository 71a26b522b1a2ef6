"""jobs.signals.batch_finished: sent once per batch, after the commit, on every path
that gives a batch its final status."""

import pytest
from django.db import transaction

from jobs import services
from jobs.models import Batch
from jobs.signals import batch_finished

from .factories import chat_request, make_batch, save_results

HOLDER = "test:1"


@pytest.fixture
def sent(db):
    calls = []

    def receiver(sender, batch_id, **kwargs):
        calls.append((sender, batch_id, Batch.objects.get(pk=batch_id).status))

    batch_finished.connect(receiver, dispatch_uid="test_signals")
    yield calls
    batch_finished.disconnect(dispatch_uid="test_signals")


def running(user, ids="ab"):
    batch = make_batch(user, [chat_request(i) for i in ids])
    Batch.objects.filter(pk=batch.pk).update(status="in_progress", total_requests=len(ids), model="tiny-llama")
    return Batch.objects.get(pk=batch.pk)


@pytest.mark.parametrize("final", ["completed", "expired"])
def test_finalize_sends_it_once(user, sent, final, django_capture_on_commit_callbacks):
    batch = running(user)
    save_results(batch, [(1, "a")])
    with django_capture_on_commit_callbacks(execute=True):
        assert services.batch_finalize(batch_id=batch.pk, final_status=final, holder=HOLDER) == final
        # A second finalize of the finished batch finds nothing to do.
        assert services.batch_finalize(batch_id=batch.pk, final_status=final, holder=HOLDER) == "skipped"
    assert sent == [(Batch, batch.pk, final)]


def test_cancel_sends_it_once(user, sent, django_capture_on_commit_callbacks):
    batch = running(user)
    with django_capture_on_commit_callbacks(execute=True):
        services.batch_cancel(batch=batch)
        services.batch_cancel(batch=batch)
    assert sent == [(Batch, batch.pk, "cancelled")]


def test_fail_sends_it_once(user, sent, django_capture_on_commit_callbacks):
    batch = running(user)
    with django_capture_on_commit_callbacks(execute=True):
        services.batch_fail(batch_id=batch.pk, code="model_not_found", message="gone")
        services.batch_fail(batch_id=batch.pk, code="model_not_found", message="gone")
    assert sent == [(Batch, batch.pk, "failed")]


def test_failed_validation_sends_it(user, chat_model, sent, django_capture_on_commit_callbacks):
    batch = make_batch(user, [chat_request("a", model="no-such-model")])
    with django_capture_on_commit_callbacks(execute=True):
        assert services.batch_validate(batch=batch, model_problem=lambda name: ("model_not_found", "no")) is False
    assert sent == [(Batch, batch.pk, "failed")]


def test_a_valid_batch_or_a_progress_save_sends_nothing(user, chat_model, sent, django_capture_on_commit_callbacks):
    batch = make_batch(user, [chat_request("a")])
    with django_capture_on_commit_callbacks(execute=True):
        assert services.batch_validate(batch=batch, model_problem=lambda name: None) is True
        Batch.objects.filter(pk=batch.pk).update(claimed_by=HOLDER)
        services.batch_results_save(batch_id=batch.pk, holder=HOLDER, rows=[])
    assert sent == []


def test_used_up_attempts_send_it_once(user, sent, settings, django_capture_on_commit_callbacks):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "MAX_BATCH_ATTEMPTS": 1}
    validating = make_batch(user, [chat_request("a")])
    processing = running(user)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.batch_attempt_failed(batch_id=validating.pk, holder=HOLDER, reason="boom") == "failed"
        assert services.batch_attempt_failed(batch_id=processing.pk, holder=HOLDER, reason="boom") == "completed"
    assert sent == [(Batch, validating.pk, "failed"), (Batch, processing.pk, "completed")]


def test_give_up_whose_finalize_fails_sends_it_once(user, sent, monkeypatch, django_capture_on_commit_callbacks):
    batch = running(user)
    Batch.objects.filter(pk=batch.pk).update(attempts=3, last_attempt_error="boom")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(services, "_result_file", broken)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.batch_give_up(batch_id=batch.pk, holder=HOLDER) == "failed"
    assert sent == [(Batch, batch.pk, "failed")]


def test_it_waits_for_the_commit(user, sent, django_capture_on_commit_callbacks):
    batch = running(user)
    with django_capture_on_commit_callbacks(execute=False) as callbacks, transaction.atomic():
        services.batch_fail(batch_id=batch.pk, code="x", message="y")
    assert sent == []
    for callback in callbacks:
        callback()
    assert sent == [(Batch, batch.pk, "failed")]


def test_a_failing_receiver_does_not_fail_the_batch(user, sent, django_capture_on_commit_callbacks):
    def broken(sender, batch_id, **kwargs):
        raise RuntimeError("receiver bug")

    batch_finished.connect(broken, dispatch_uid="test_signals_broken")
    try:
        batch = running(user)
        with django_capture_on_commit_callbacks(execute=True):
            services.batch_fail(batch_id=batch.pk, code="x", message="y")
    finally:
        batch_finished.disconnect(dispatch_uid="test_signals_broken")
    assert Batch.objects.get(pk=batch.pk).status == "failed"
    assert len(sent) == 1
