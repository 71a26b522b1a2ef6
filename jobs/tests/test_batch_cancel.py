"""POST /v1/batches/{id}/cancel and jobs.services.batch_cancel."""

import datetime

from django.utils import timezone

from jobs import services
from jobs.models import Batch, BatchResult

from .factories import (
    assert_error,
    chat_request,
    custom_ids,
    dead_holder,
    live_holder,
    make_batch,
    read_jsonl,
    save_results,
)


def test_cancel_a_batch_no_worker_holds_ends_it_at_once(api, user, chat_model):
    batch = make_batch(user, [chat_request("a"), chat_request("b")])
    response = api.post(f"/v1/batches/{batch.id}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled"
    assert isinstance(body["cancelling_at"], int)
    assert isinstance(body["cancelled_at"], int)
    assert body["output_file_id"] is None
    assert body["error_file_id"] is None
    stored = Batch.objects.get(pk=batch.pk)
    assert stored.status == "cancelled"
    assert stored.claimed_by == ""


def test_cancel_keeps_finished_results(user, chat_model):
    batch = make_batch(user, [chat_request(c) for c in "abcd"])
    Batch.objects.filter(pk=batch.pk).update(status="in_progress", total_requests=4, model="tiny-llama")
    save_results(batch, [(1, "a"), (2, "b")])

    batch = services.batch_cancel(batch=Batch.objects.get(pk=batch.pk))

    assert batch.status == "cancelled"
    assert custom_ids(read_jsonl(batch.output_file_id)) == ["a", "b"]
    assert batch.error_file_id is None
    assert batch.completed_requests == 2
    assert not BatchResult.objects.filter(batch=batch).exists()


def test_cancel_a_batch_with_a_live_lease_leaves_it_to_the_worker(user, chat_model):
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(
        status="in_progress", claimed_by=live_holder(), heartbeat_at=timezone.now()
    )
    batch = services.batch_cancel(batch=Batch.objects.get(pk=batch.pk))
    assert batch.status == "cancelling"
    assert batch.cancelling_at is not None
    stored = Batch.objects.get(pk=batch.pk)
    assert stored.status == "cancelling"
    assert stored.cancelled_at is None
    assert stored.output_file_id is None
    assert stored.claimed_by == live_holder()


def test_cancel_a_batch_whose_worker_died_ends_it_at_once(user, chat_model):
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(
        status="in_progress", claimed_by=dead_holder(), heartbeat_at=timezone.now()
    )
    assert services.batch_cancel(batch=batch).status == "cancelled"


def test_cancel_a_batch_whose_lease_went_stale_ends_it_at_once(user, chat_model, settings):
    batch = make_batch(user, [chat_request("a")])
    stale = timezone.now() - datetime.timedelta(seconds=settings.VLLM_BATCH["STALE_BATCH_SECONDS"] + 5)
    Batch.objects.filter(pk=batch.pk).update(status="in_progress", claimed_by="elsewhere:1", heartbeat_at=stale)
    assert services.batch_cancel(batch=batch).status == "cancelled"


def test_cancel_twice_answers_the_same_batch(api, user, chat_model):
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(claimed_by=live_holder(), heartbeat_at=timezone.now())
    first = api.post(f"/v1/batches/{batch.id}/cancel").json()
    second = api.post(f"/v1/batches/{batch.id}/cancel").json()
    assert first["status"] == second["status"] == "cancelling"
    assert first["cancelling_at"] == second["cancelling_at"]
    assert api.post(f"/v1/batches/{batch.id}/cancel").status_code == 200


def test_cancel_a_completed_batch_is_a_conflict(api, user, chat_model):
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(status="completed", completed_at=timezone.now())
    assert_error(api.post(f"/v1/batches/{batch.id}/cancel"), 409, code="batch_not_cancellable")
    assert Batch.objects.get(pk=batch.pk).status == "completed"


def test_cancel_a_finished_batch_is_a_conflict_for_each_end_state(user, chat_model, api):
    for status in ("failed", "expired", "finalizing"):
        batch = make_batch(user, [chat_request("a")])
        Batch.objects.filter(pk=batch.pk).update(status=status)
        assert_error(api.post(f"/v1/batches/{batch.id}/cancel"), 409)
        assert Batch.objects.get(pk=batch.pk).status == status


def test_cancel_unknown_batch_is_not_found(api, db):
    assert_error(api.post("/v1/batches/batch_nope/cancel"), 404)
