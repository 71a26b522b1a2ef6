"""GET /v1/stats and the history filters of GET /v1/batches, against hand-computed values."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from jobs import selectors
from jobs.models import Batch

from .factories import assert_error, make_user

NOW = datetime(2026, 11, 30, 12, 30, tzinfo=UTC)


def row(owner, status, model="m-a", start=None, seconds=None, done=0, failed=0, tin=0, tout=0, created=None):
    fields = {}
    if start is not None:
        fields = {"in_progress_at": start, "completed_at": start + timedelta(seconds=seconds)}
    return Batch.objects.create(
        owner=owner,
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        status=status,
        model=model,
        total_requests=done + failed,
        completed_requests=done,
        failed_requests=failed,
        input_tokens=tin,
        output_tokens=tout,
        created_at=created or NOW - timedelta(days=3),
        expires_at=NOW + timedelta(hours=24),
        **fields,
    )


@pytest.mark.django_db
def test_stats_against_hand_computed_values():
    alice, bob = make_user("alice"), make_user("bob")
    row(
        alice,
        "completed",
        start=datetime(2026, 11, 30, 11, 0, tzinfo=UTC),
        seconds=600,
        done=10,
        failed=2,
        tin=100,
        tout=50,
    )
    row(
        alice,
        "completed",
        model="m-b",
        start=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
        seconds=300,
        done=5,
        tin=20,
        tout=10,
    )
    row(alice, "failed")
    row(alice, "cancelled", done=1, tin=3, tout=4)
    row(alice, "in_progress", done=2, tin=5, tout=6)
    row(alice, "completed", start=NOW - timedelta(days=2), seconds=100, done=1, tin=1, tout=1)
    row(bob, "completed", start=NOW - timedelta(hours=1), seconds=10, done=1000, tin=9999, tout=9999)  # fmt: skip

    stats = selectors.batch_stats(owner=alice, now=NOW)

    assert stats["total_batches"] == 6
    assert stats["by_status"] == {
        "validating": 0, "failed": 1, "in_progress": 1, "finalizing": 0,
        "completed": 3, "expired": 0, "cancelling": 0, "cancelled": 1,
    }  # fmt: skip
    assert stats["success_rate"] == 0.6  # 3 completed of 5 finished
    assert stats["average_duration_seconds"] == pytest.approx((600 + 300 + 100) / 3, abs=1e-3)
    keys = ("model", "batches", "requests_completed", "requests_failed", "input_tokens", "output_tokens")
    assert [tuple(m[k] for k in keys) for m in stats["by_model"]] == [
        ("m-a", 5, 14, 2, 109, 61),
        ("m-b", 1, 5, 0, 20, 10),
    ]
    assert (stats["input_tokens"], stats["output_tokens"]) == (129, 71)
    hourly = stats["hourly"]
    assert len(hourly) == 24
    assert hourly[0]["start"] == int(datetime(2026, 11, 29, 13, 0, tzinfo=UTC).timestamp())
    assert hourly[-1]["start"] == int(datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp())
    assert hourly[22] == {
        "start": hourly[22]["start"],
        "batches_completed": 1,
        "requests_completed": 10,
        "output_tokens": 50,
    }
    assert hourly[23] == {
        "start": hourly[23]["start"],
        "batches_completed": 1,
        "requests_completed": 5,
        "output_tokens": 10,
    }
    assert sum(h["batches_completed"] for h in hourly[:22]) == 0


@pytest.mark.django_db
def test_stats_api_is_the_callers(api, user):
    mine = row(user, "completed", start=timezone.now() - timedelta(minutes=5), seconds=60, done=3, tout=9)
    row(make_user("bob"), "completed", done=1000)
    body = api.get("/v1/stats").json()
    assert body["object"] == "stats"
    assert body["total_batches"] == 1
    assert body["by_model"][0]["requests_completed"] == 3
    assert body["success_rate"] == 1.0
    assert sum(h["output_tokens"] for h in body["hourly"]) == 9
    assert body["by_model"][0]["model"] == mine.model


@pytest.mark.django_db
def test_empty_stats(api):
    body = api.get("/v1/stats").json()
    assert body["total_batches"] == 0
    assert body["success_rate"] is None and body["average_duration_seconds"] is None


@pytest.mark.django_db
def test_history_filters(api, user):
    day = timedelta(days=1)
    old = row(user, "completed", created=NOW - 3 * day)
    mid = row(user, "failed", model="m-b", created=NOW - 2 * day)
    new = row(user, "completed", created=NOW - day)
    row(make_user("bob"), "completed", created=NOW - day)

    def ids(**params):
        return [b["id"] for b in api.get("/v1/batches", params).json()["data"]]

    assert ids() == [new.id, mid.id, old.id]
    assert ids(status="completed") == [new.id, old.id]
    assert ids(model="m-b") == [mid.id]
    assert ids(created_after=int((NOW - 2 * day).timestamp())) == [new.id, mid.id]
    assert ids(created_before=int((NOW - 2 * day).timestamp())) == [old.id]
    assert ids(status="completed", after=new.id) == [old.id]
    # The cursor may be a batch the filter leaves out.
    assert ids(status="completed", after=mid.id) == [old.id]
    body = api.get("/v1/batches", {"status": "completed", "limit": 1}).json()
    assert body["has_more"] is True and body["first_id"] == new.id


@pytest.mark.django_db
def test_bad_history_filters(api):
    assert_error(api.get("/v1/batches", {"status": "done"}), 400, param="status")
    assert_error(api.get("/v1/batches", {"created_after": "yesterday"}), 400, param="created_after")
    assert_error(api.get("/v1/batches", {"created_before": "-5"}), 400, param="created_before")
    # Past year 9999 there is no datetime: a 400, not a 500.
    assert_error(api.get("/v1/batches", {"created_before": "1099511627775"}), 400, param="created_before")
    assert_error(api.get("/v1/batches", {"created_after": "253402300800"}), 400, param="created_after")
