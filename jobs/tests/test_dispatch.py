"""Dispatch from the database (jobs.leases.claim_next): which batch a woken worker
takes. Priority, then the model it holds (until another model's batch has waited
VLLM_BATCH_AFFINITY_WAIT_SECONDS), then age; never a model outside the node's
labels; one claim per batch however many workers ask at once. Plus
metadata.priority at creation and the queue's estimates on the batch object."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.urls import reverse
from django.utils import timezone

from jobs import leases, selectors
from jobs.models import Batch

from .factories import assert_error, batch_row, chat_request, make_input_file

HOLDER = "node-a@test:1"
OTHER = "node-b@test:2"


@pytest.fixture
def affinity_wait(settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "AFFINITY_WAIT_SECONDS": 60.0}


def waiting(owner, model="m-a", *, priority=0, age=0, **fields):
    """An in_progress batch no worker holds, made `age` seconds ago."""
    return batch_row(
        owner,
        "in_progress",
        model=model,
        total=10,
        priority=priority,
        created_at=timezone.now() - timedelta(seconds=age),
        **fields,
    )


def order(**kwargs):
    return list(leases.claimable(**kwargs).values_list("pk", flat=True))


def test_higher_priority_first_then_the_oldest(user):
    low = waiting(user, priority=-1, age=300)
    normal_old = waiting(user, age=200)
    normal_new = waiting(user, age=100)
    high = waiting(user, priority=1, age=10)
    assert order() == [high.pk, normal_old.pk, normal_new.pk, low.pk]
    assert leases.claim_next(HOLDER).pk == high.pk


def test_the_held_model_goes_before_an_older_batch_of_another_model(user, affinity_wait):
    other = waiting(user, "m-a", age=30)
    held = waiting(user, "m-b", age=5)
    assert order(held_model="m-b") == [held.pk, other.pk]
    # A worker holding nothing (or m-a) takes them by age.
    assert order() == [other.pk, held.pk]
    assert order(held_model="m-a") == [other.pk, held.pk]


def test_a_batch_that_waited_past_the_affinity_wait_is_taken_by_age(user, affinity_wait):
    starving = waiting(user, "m-a", age=61)
    held = waiting(user, "m-b", age=5)
    assert order(held_model="m-b") == [starving.pk, held.pk]


def test_another_model_is_taken_when_none_of_the_held_model_waits(user, affinity_wait):
    other = waiting(user, "m-a", age=1)
    assert leases.claim_next(HOLDER, held_model="m-b").pk == other.pk


def test_priority_beats_affinity(user, affinity_wait):
    held = waiting(user, "m-b", age=30)
    urgent = waiting(user, "m-a", priority=1, age=1)
    assert order(held_model="m-b") == [urgent.pk, held.pk]


def test_a_model_an_idle_worker_elsewhere_holds_is_left_to_it_for_the_affinity_wait(user, affinity_wait):
    theirs = waiting(user, "m-a", age=30)
    mine = waiting(user, "m-b", age=5)
    assert order(held_model="m-b", left_for={"m-a"}) == [mine.pk]
    assert order(left_for={"m-a"}) == [mine.pk]  # holding nothing: no load of a model held idle elsewhere
    assert order(held_model="m-a", left_for={"m-a"}) == [theirs.pk, mine.pk]  # this worker holds it too
    waited = waiting(user, "m-a", age=61)
    assert order(held_model="m-b", left_for={"m-a"}) == [waited.pk, mine.pk]


def test_a_node_never_takes_a_model_outside_its_labels(user):
    other = waiting(user, "m-a", age=100)
    mine = waiting(user, "m-b", age=1)
    assert order(allowed_models={"m-b"}) == [mine.pk]
    assert leases.claim_next(HOLDER, allowed_models={"m-b"}).pk == mine.pk
    assert leases.claim_next(HOLDER, allowed_models={"m-b"}) is None
    other.refresh_from_db()
    assert other.claimed_by == ""


def test_a_validating_batch_names_no_model_yet_and_any_node_may_take_it(user):
    validating = batch_row(user, "validating", model="", total=0)
    assert order(allowed_models={"m-b"}) == [validating.pk]


def test_live_leases_finished_batches_and_pending_retries_are_passed_over(user):
    now = timezone.now()
    waiting(user, age=50, claimed_by=OTHER, heartbeat_at=now)
    waiting(user, age=40, retry_at=now + timedelta(minutes=5))
    batch_row(user, "completed", total=10)
    retried = waiting(user, age=30, retry_at=now - timedelta(seconds=1))
    stale = waiting(user, age=20, claimed_by=OTHER, heartbeat_at=now - timedelta(hours=1))
    assert order() == [retried.pk, stale.pk]


def test_each_batch_is_claimed_once_by_competing_workers(user):
    first, second = waiting(user, age=20), waiting(user, age=10)
    assert leases.claim_next(HOLDER).pk == first.pk
    assert leases.claim_next(OTHER).pk == second.pk
    assert leases.claim_next("node-c@test:3") is None
    assert dict(Batch.objects.values_list("pk", "claimed_by")) == {first.pk: HOLDER, second.pk: OTHER}


def test_a_candidate_taken_meanwhile_is_skipped_for_the_next(user, monkeypatch):
    """The conditional update: another worker claims the first candidate between
    this worker's read and its update; this worker takes the next one."""
    first, second = waiting(user, age=20), waiting(user, age=10)
    claim = leases.claim

    def racing_claim(batch_id, holder):
        if batch_id == first.pk and holder == HOLDER:
            assert claim(batch_id, OTHER) is not None
        return claim(batch_id, holder)

    monkeypatch.setattr(leases, "claim", racing_claim)
    assert leases.claim_next(HOLDER).pk == second.pk
    assert Batch.objects.get(pk=first.pk).claimed_by == OTHER


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="SKIP LOCKED is PostgreSQL's")
def test_a_row_locked_by_another_worker_is_skipped_on_postgresql(user):
    first, second = waiting(user, age=20), waiting(user, age=10)
    locked, release = threading.Event(), threading.Event()

    def other_worker():
        try:
            with transaction.atomic():
                Batch.objects.select_for_update().filter(pk=first.pk).get()
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_worker)
    thread.start()
    try:
        assert locked.wait(10)
        assert leases.claim_next(HOLDER).pk == second.pk
    finally:
        release.set()
        thread.join(10)
    assert leases.claim_next(OTHER).pk == first.pk


# -- metadata.priority at creation ------------------------------------------------


def test_metadata_priority_is_stored_on_the_batch(api, user, chat_model):
    file = make_input_file(user, [chat_request("a")])
    for value, stored in (("1", 1), ("-1", -1), ("0", 0), (None, 0)):
        metadata = {"priority": value} if value is not None else {"note": "x"}
        response = api.post(
            "/v1/batches",
            {
                "input_file_id": file.id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": metadata,
            },
            format="json",
        )
        assert response.status_code == 200, response.content
        assert response.json()["metadata"] == metadata
        assert Batch.objects.get(pk=response.json()["id"]).priority == stored


@pytest.mark.parametrize("value", ["2", "high", "", " 1", "+1"])
def test_a_bad_metadata_priority_is_refused(api, user, chat_model, value):
    file = make_input_file(user, [chat_request("a")])
    response = api.post(
        "/v1/batches",
        {
            "input_file_id": file.id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"priority": value},
        },
        format="json",
    )
    assert_error(response, 400, code="invalid_value", param="metadata.priority")
    assert not Batch.objects.exists()


# -- the queue's estimates on the batch object ------------------------------------


def test_the_batch_object_shows_its_place_in_the_queue(api, user):
    now = timezone.now()
    # A measured rate: 10 requests in 10 s.
    batch_row(
        user,
        "completed",
        total=10,
        done=10,
        in_progress_at=now - timedelta(seconds=20),
        completed_at=now - timedelta(seconds=10),
    )
    running = batch_row(
        user,
        "in_progress",
        model="m-a",
        total=10,
        done=5,
        claimed_by=OTHER,
        heartbeat_at=now,
        in_progress_at=now - timedelta(seconds=5),
        created_at=now - timedelta(seconds=100),
    )
    normal = waiting(user, age=50)
    urgent = waiting(user, priority=1, age=1)
    finished = batch_row(user, "completed", total=1, done=1)

    body = {b["id"]: b for b in api.get("/v1/batches").json()["data"]}
    assert body[urgent.pk]["queue_position"] == 1
    assert body[normal.pk]["queue_position"] == 2
    assert body[running.pk]["queue_position"] is None
    assert body[running.pk]["estimated_start_at"] is None
    # 5 left at 1 request/s, on the one worker running.
    assert body[running.pk]["estimated_finish_at"] == pytest.approx(body[urgent.pk]["estimated_start_at"], abs=1)
    assert body[urgent.pk]["estimated_finish_at"] == pytest.approx(body[urgent.pk]["estimated_start_at"] + 10, abs=1)
    assert body[normal.pk]["estimated_start_at"] == pytest.approx(body[urgent.pk]["estimated_finish_at"], abs=1)
    for key in ("queue_position", "estimated_start_at", "estimated_finish_at"):
        assert body[finished.pk][key] is None
    one = api.get(f"/v1/batches/{normal.pk}").json()
    assert one["queue_position"] == 2
    assert one["estimated_start_at"] == pytest.approx(body[normal.pk]["estimated_start_at"], abs=1)


def test_the_queue_and_the_batch_object_share_one_order(api, user):
    normal = waiting(user, age=50)
    urgent = waiting(user, priority=1, age=1)
    queue = selectors.batch_queue(owner=user, workers_online=1)
    assert [row["id"] for row in queue["queued"]] == [urgent.pk, normal.pk]
    assert [row["position"] for row in queue["queued"]] == [1, 2]


def test_the_admin_shows_priority_and_the_queue(admin_client, user):
    normal = waiting(user, age=50)
    urgent = waiting(user, priority=1, age=1)
    page = admin_client.get("/admin/jobs/batch/").content.decode()
    # Newest first: the urgent batch's row, then the normal one's.
    assert page.index(urgent.pk) < page.index("#1") < page.index(normal.pk) < page.index("#2")
    detail = admin_client.get(reverse("admin:jobs_batch_change", args=[normal.pk])).content.decode()
    assert "#2" in detail


def test_a_batch_whose_slice_ran_out_goes_behind_the_batches_waiting(user):
    """Batches of one priority take turns: a long batch's continuation waits behind
    the batches queued meanwhile; a batch handed back for other reasons keeps its place."""
    long = waiting(user, age=100)
    later = waiting(user, age=50)
    assert order() == [long.pk, later.pk]
    assert leases.claim_next("w1", held_model="m-a") == long
    leases.release_to_back(long.pk, "w1")
    assert order() == [later.pk, long.pk]
    assert leases.claim_next("w1", held_model="m-a").pk == later.pk
    leases.release(later.pk, "w1")
    assert order() == [later.pk, long.pk]
