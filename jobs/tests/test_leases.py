"""jobs.leases: the watchdog's requeueing of batches whose worker died or went quiet."""

import datetime
import os
import socket

import pytest
from django.utils import timezone

from jobs import leases
from jobs.models import Batch
from jobs.tests.factories import chat_request, dead_holder, live_holder, make_batch


@pytest.fixture
def queued(monkeypatch):
    calls = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", calls.append)
    return calls


@pytest.fixture
def batch(user, chat_model):
    return make_batch(user, [chat_request("a")])


def stale_time(settings):
    return timezone.now() - datetime.timedelta(seconds=settings.VLLM_BATCH["STALE_BATCH_SECONDS"] + 5)


def hold(batch, **fields):
    Batch.objects.filter(pk=batch.pk).update(**{"status": "in_progress", **fields})


def test_batch_of_a_dead_local_worker_is_requeued_at_once(batch, queued):
    hold(batch, claimed_by=dead_holder(), heartbeat_at=timezone.now())
    assert leases.requeue_stale_batches() == [batch.pk]
    assert queued == [batch.pk]
    batch.refresh_from_db()
    assert batch.claimed_by == ""
    assert batch.heartbeat_at is None
    assert batch.status == "in_progress"


def test_batch_of_a_dead_finalizer_is_requeued(batch, queued):
    hold(batch, claimed_by=f"finalizer:{dead_holder()}", heartbeat_at=timezone.now())
    assert leases.requeue_stale_batches() == [batch.pk]


def test_batch_with_a_live_local_lease_is_left_alone(batch, queued):
    hold(batch, claimed_by=live_holder(), heartbeat_at=timezone.now())
    assert leases.requeue_stale_batches() == []
    assert queued == []
    batch.refresh_from_db()
    assert batch.claimed_by == live_holder()


def test_fresh_lease_of_another_host_is_left_alone(batch, queued):
    hold(batch, claimed_by="some-other-host:1234", heartbeat_at=timezone.now())
    assert leases.requeue_stale_batches() == []
    assert queued == []


def test_batch_whose_heartbeat_went_stale_is_requeued(batch, queued, settings):
    hold(batch, claimed_by="some-other-host:1234", heartbeat_at=stale_time(settings))
    assert leases.requeue_stale_batches() == [batch.pk]
    assert queued == [batch.pk]


def test_unclaimed_batch_quiet_for_long_is_requeued_once_per_period(batch, queued, settings):
    Batch.objects.filter(pk=batch.pk).update(updated_at=stale_time(settings))
    assert leases.requeue_stale_batches() == [batch.pk]
    # Requeueing counts as activity: the next round waits for the new task.
    assert leases.requeue_stale_batches() == []
    assert queued == [batch.pk]


def test_a_just_created_batch_is_left_to_its_queued_task(batch, queued):
    assert leases.requeue_stale_batches() == []
    assert queued == []


def test_finished_batches_are_never_requeued(user, chat_model, queued, settings):
    for status in Batch.FINISHED:
        batch = make_batch(user, [chat_request("a")])
        Batch.objects.filter(pk=batch.pk).update(
            status=status, claimed_by=dead_holder(), heartbeat_at=stale_time(settings), updated_at=stale_time(settings)
        )
    assert leases.requeue_stale_batches() == []
    assert queued == []


def test_every_active_status_is_watched(user, chat_model, queued, settings):
    ids = []
    for status in Batch.ACTIVE:
        batch = make_batch(user, [chat_request("a")])
        Batch.objects.filter(pk=batch.pk).update(status=status, heartbeat_at=stale_time(settings))
        ids.append(batch.pk)
    assert leases.requeue_stale_batches() == sorted(ids)


# -- holder names and clocks: no false takeovers ---------------------------------


def test_a_holder_names_this_machine_and_boot_not_only_the_host():
    host_tag, _, pid = leases.holder_name().rpartition(":")
    host, _, tag = host_tag.partition("@")
    assert host == socket.gethostname()
    assert len(tag) == 12
    assert pid == str(os.getpid())


def test_a_dead_pid_of_the_same_hostname_on_another_machine_or_boot_is_not_judged_here(batch, queued):
    with open("/proc/sys/kernel/pid_max") as f:
        impossible = int(f.read()) + 1
    for holder in (f"{socket.gethostname()}:{impossible}", f"{socket.gethostname()}@0123456789ab:{impossible}"):
        assert not leases.holder_is_dead_here(holder)
        hold(batch, claimed_by=holder, heartbeat_at=timezone.now())
        assert leases.requeue_stale_batches() == []
    assert leases.holder_is_dead_here(dead_holder())
    assert not leases.holder_is_dead_here(live_holder())


FIRST, SECOND = "first-host@aaaaaaaaaaaa:1", "second-host@bbbbbbbbbbbb:2"


def skew_clock(monkeypatch, by):
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + by)
    return real_now


def test_a_worker_whose_clock_runs_ahead_does_not_take_over_a_fresh_lease(batch, monkeypatch):
    leases.claim(batch.pk, FIRST)
    skew_clock(monkeypatch, datetime.timedelta(hours=1))
    assert leases.claim(batch.pk, SECOND) is None
    assert not leases.stale_batches().exists()
    assert leases.lease_is_live(batch)
    batch.refresh_from_db()
    assert batch.claimed_by == FIRST


def test_a_worker_whose_clock_runs_behind_keeps_its_lease(batch, monkeypatch):
    real_now = skew_clock(monkeypatch, datetime.timedelta(hours=-1))
    leases.claim(batch.pk, FIRST)
    monkeypatch.setattr(timezone, "now", real_now)
    assert leases.claim(batch.pk, SECOND) is None
    batch.refresh_from_db()
    assert batch.claimed_by == FIRST
    assert abs(batch.heartbeat_at - real_now()) < datetime.timedelta(minutes=1)
