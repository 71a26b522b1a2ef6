"""GET /v1/queue: order, positions and estimates, computed by hand."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import selectors
from jobs.models import Batch
from jobs.tests.factories import batch_row, make_client, make_user
from workers.tests.factories import make_worker

pytestmark = pytest.mark.django_db


def row(owner, status, now, model="m-a", total=0, done=0, failed=0, tout=0, created_ago=0, **fields):
    return batch_row(
        owner,
        status,
        model=model,
        total=total,
        done=done,
        failed_requests=failed,
        output_tokens=tout,
        created_at=now - timedelta(seconds=created_ago),
        **fields,
    )


@pytest.fixture
def queue():
    """One completed batch gives m-a's rate (2 requests/s); one runs; three wait."""
    now = timezone.now()
    alice, bob = make_user("alice"), make_user("bob")
    row(
        alice, "completed", now, total=200, done=200, created_ago=9000,
        in_progress_at=now - timedelta(hours=2), completed_at=now - timedelta(hours=2) + timedelta(seconds=100),
    )  # fmt: skip
    running = row(
        alice, "in_progress", now, total=300, done=90, failed=10, tout=500, created_ago=600,
        in_progress_at=now - timedelta(seconds=100), claimed_by="gpu1:7", heartbeat_at=now,
    )  # fmt: skip
    first = row(bob, "validating", now, total=40, created_ago=50)
    second = row(alice, "validating", now, model="m-b", total=10, created_ago=40)
    # Released after a failure: waits again, with 4 requests already done.
    third = row(alice, "in_progress", now, total=20, done=4, created_ago=30, in_progress_at=now - timedelta(hours=1))
    return now, alice, bob, running, first, second, third


def test_order_positions_and_estimates(queue):
    now, alice, bob, running, first, second, third = queue
    q = selectors.batch_queue(owner=alice, workers_online=1, now=now)
    assert q["running_total"] == 1 and q["queued_total"] == 3
    assert q["running"] == [
        {
            "id": running.id,
            "model": "m-a",
            "total_requests": 300,
            "done_requests": 100,
            "progress": 0.3333,
            "output_tokens_per_second": 5.0,  # 500 tokens in 100 s
            "eta_seconds": 200.0,  # 200 left at 1 request/s
        }
    ]
    # Bob's batch is first (not shown); 40 requests at m-a's 2/s = 20 s; m-b has no
    # rate of its own and takes the overall one (2/s): 10 requests = 5 s.
    assert [(b["id"], b["position"], b["estimated_start_seconds"]) for b in q["queued"]] == [
        (second.id, 2, 220.0),
        (third.id, 3, 225.0),
    ]
    bobs = selectors.batch_queue(owner=bob, workers_online=1, now=now)
    assert bobs["running"] == []
    assert [(b["id"], b["position"], b["estimated_start_seconds"]) for b in bobs["queued"]] == [(first.id, 1, 200.0)]


def test_two_workers_share_the_wait(queue):
    now, alice, *_ = queue
    q = selectors.batch_queue(owner=alice, workers_online=2, now=now)
    assert [b["estimated_start_seconds"] for b in q["queued"]] == [110.0, 112.5]


def test_no_rate_no_estimate():
    now = timezone.now()
    alice = make_user("alice")
    row(alice, "validating", now, total=5, created_ago=20)
    later = row(alice, "validating", now, total=5, created_ago=10)
    q = selectors.batch_queue(owner=alice, workers_online=0, now=now)
    assert [(b["position"], b["estimated_start_seconds"]) for b in q["queued"]] == [(1, 0.0), (2, None)]
    assert q["queued"][1]["id"] == later.id


def test_a_stale_lease_waits_again(queue):
    now, alice, bob, running, *_ = queue
    Batch.objects.filter(pk=running.pk).update(heartbeat_at=now - timedelta(hours=1))
    q = selectors.batch_queue(owner=alice, workers_online=1, now=now)
    assert q["running"] == [] and q["queued_total"] == 4
    assert q["queued"][0]["id"] == running.id and q["queued"][0]["position"] == 1


def test_the_api(queue):
    _now, alice, *_ = queue
    make_worker(hostname="gpu1", pid=7)
    make_worker(hostname="gpu2", pid=8, age=3600)
    body = make_client(alice).get("/v1/queue").json()
    assert body["object"] == "queue"
    assert body["workers_online"] == 1
    assert [b["position"] for b in body["queued"]] == [2, 3]
    assert body["running"][0]["eta_seconds"] == pytest.approx(200, rel=0.05)


def test_the_api_needs_a_key(client):
    assert client.get("/v1/queue").status_code == 401
