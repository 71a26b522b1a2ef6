"""Who works on a batch: the lease a worker holds while it runs one.

A holder is named `host@tag:pid`, the tag naming the machine's boot (a worker's
Worker row has the same name). Heartbeats and staleness use the database's
clock, so a worker's skewed clock cannot make a live lease look stale. The
lease is kept fresh by a thread (LeaseKeeper), taken over once it goes stale,
and freed at once when its holder died on this host; the watchdog puts such
batches back on the queue.
"""

import functools
import hashlib
import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

import psutil
from django.conf import settings
from django.db import close_old_connections, connection, connections, transaction
from django.db.models import Case, DateTimeField, ExpressionWrapper, IntegerField, Q, Value, When
from django.db.models.functions import Now
from django.utils import timezone

from . import queueing
from .models import Batch

logger = logging.getLogger(__name__)


class LeaseLost(Exception):
    """The holder's lease on the batch was taken over (it went stale, say while the
    holder was paused): the holder stops working on the batch, the new holder ends it."""

    def __init__(self, batch_id, holder):
        super().__init__(f"{holder} no longer holds the lease on batch {batch_id}")
        self.batch_id = batch_id
        self.holder = holder


@functools.cache
def machine_name():
    """This machine and boot, as lease holders name it: `host@tag`, the tag from the
    kernel's boot id (and the machine id), so two machines with one hostname, or one
    machine before and after a reboot (when pids start again), never share a name.
    Without either file, a random tag per process start: a holder is then judged
    dead only by its own process, never wrongly by another."""
    parts = []
    for path in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            with open(path) as f:
                parts.append(f.read().strip())
        except OSError:
            continue
    if not any(parts):
        parts = [uuid.uuid4().hex]
    tag = hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]
    return f"{socket.gethostname()}@{tag}"


def holder_name():
    """This process as a lease holder: `host@tag:pid`."""
    return f"{machine_name()}:{os.getpid()}"


def stale_before():
    """The database's time less VLLM_BATCH_STALE_BATCH_SECONDS, as an expression: a
    lease is judged by the clock that wrote it, never by a worker's own clock."""
    return ExpressionWrapper(
        Now() - timedelta(seconds=settings.VLLM_BATCH["STALE_BATCH_SECONDS"]), output_field=DateTimeField()
    )


def holder_is_dead_here(holder):
    """True when the lease holder was a process of this machine and boot that no longer runs."""
    machine, _, pid = holder.rpartition(":")
    if machine.rsplit(":", 1)[-1] != machine_name() or not pid.isdigit():
        return False
    return not psutil.pid_exists(int(pid))


def lease_is_live(batch):
    holder = (
        Batch.objects.filter(pk=batch.pk, heartbeat_at__gte=stale_before())
        .exclude(claimed_by="")
        .values_list("claimed_by", flat=True)
        .first()
    )
    return holder is not None and not holder_is_dead_here(holder)


def claim(batch_id, holder):
    """Takes the batch's lease if it is free, ours, or stale. Returns the batch or None.

    A new holder counts as progress: the stuck clock (progress_at) starts again."""
    now = Now()
    free = (
        Batch.objects.filter(pk=batch_id, status__in=Batch.ACTIVE)
        .filter(Q(claimed_by="") | Q(heartbeat_at__lt=stale_before()) | Q(heartbeat_at=None))
        .exclude(claimed_by=holder)
        .update(claimed_by=holder, heartbeat_at=now, progress_at=now)
    )
    claimed = free or Batch.objects.filter(pk=batch_id, status__in=Batch.ACTIVE, claimed_by=holder).update(
        heartbeat_at=now
    )
    return Batch.objects.get(pk=batch_id) if claimed else None


def claimable(*, held_model=None, allowed_models=(), left_for=(), now=None):
    """Active batches whose lease is free or stale, not waiting for a retry, of a
    model this node may load (`allowed_models`, empty: any; a batch still
    validating names no model yet and any node may take it), in the order a worker
    holding `held_model` takes them: priority, then affinity, then turn (queued_at:
    creation, or the end of the last task slice). A batch of another model comes
    after the held model's ones of its priority until it has waited
    VLLM_BATCH_AFFINITY_WAIT_SECONDS, so a swap waits a little for the held model's
    work but nothing starves. Batches of the models in `left_for` (held by other
    workers that are idle) are left to those workers for the same wait."""
    now = now or timezone.now()
    waited_since = now - timedelta(seconds=settings.VLLM_BATCH["AFFINITY_WAIT_SECONDS"])
    queryset = (
        Batch.objects.filter(status__in=Batch.ACTIVE)
        .filter(Q(claimed_by="") | Q(heartbeat_at__lt=stale_before()) | Q(heartbeat_at=None))
        .filter(Q(retry_at=None) | Q(retry_at__lte=now))
    )
    if allowed_models:
        queryset = queryset.filter(Q(model__in=list(allowed_models)) | Q(model=""))
    left_for = set(left_for) - {held_model, ""}
    if left_for:
        queryset = queryset.exclude(Q(model__in=left_for) & Q(queued_at__gt=waited_since))
    if held_model:
        later = Case(
            When(Q(model=held_model) | Q(model="") | Q(queued_at__lte=waited_since), then=Value(0)),
            default=Value(1),
            output_field=IntegerField(),
        )
    else:
        later = Value(0, output_field=IntegerField())
    return queryset.annotate(swap_later=later).order_by("-priority", "swap_later", "queued_at", "pk")


def claim_next(holder, *, held_model=None, allowed_models=(), left_for=(), now=None):
    """Takes the lease of the first claimable batch (see claimable); returns it, or
    None when there is none. Any number of workers may call this at once: on
    PostgreSQL the row is locked with SKIP LOCKED (a worker passes over a batch
    another is taking), elsewhere each candidate is tried with claim's
    conditional update until one succeeds."""
    candidates = claimable(held_model=held_model, allowed_models=allowed_models, left_for=left_for, now=now)
    if connection.features.has_select_for_update_skip_locked:
        for _attempt in range(10):
            with transaction.atomic():
                batch_id = candidates.select_for_update(skip_locked=True, of=("self",)).values_list("pk", flat=True)
                batch_id = batch_id.first()
                if batch_id is None:
                    return None
                batch = claim(batch_id, holder)
            if batch is not None:
                return batch
        return None
    for batch_id in candidates.values_list("pk", flat=True)[:50]:
        batch = claim(batch_id, holder)
        if batch is not None:
            return batch
    return None


def release(batch_id, holder):
    Batch.objects.filter(pk=batch_id, claimed_by=holder).update(claimed_by="", heartbeat_at=None)


def release_to_back(batch_id, holder):
    """Releases a batch whose task slice was used up and puts it behind the batches
    of its priority waiting now: long batches take turns with the others."""
    Batch.objects.filter(pk=batch_id, claimed_by=holder).update(claimed_by="", heartbeat_at=None, queued_at=Now())


class LeaseKeeper:
    """Keeps the batch's heartbeat fresh from a thread, also while a model loads."""

    def __init__(self, batch_id, holder, interval=None):
        self.batch_id = batch_id
        self.holder = holder
        self.interval = interval or max(1.0, settings.VLLM_BATCH["STALE_BATCH_SECONDS"] / 4)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lease-{batch_id}", daemon=True)

    def _run(self):
        try:
            while not self.stop_event.wait(self.interval):
                try:
                    self.beat()
                except Exception:
                    logger.exception("lease heartbeat failed for %s", self.batch_id)
                finally:
                    close_old_connections()
        finally:
            # The thread's own connection (one per batch, or per cancel in a web request) ends with it.
            connections.close_all()

    def beat(self):
        Batch.objects.filter(pk=self.batch_id, claimed_by=self.holder).update(heartbeat_at=Now())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=5)


def reap_dead_leases():
    """Frees the leases of dead local workers at once, instead of waiting for them to go stale."""
    freed = []
    for batch_id, holder in (
        Batch.objects.filter(status__in=Batch.ACTIVE).exclude(claimed_by="").values_list("pk", "claimed_by")
    ):
        if holder_is_dead_here(holder) and Batch.objects.filter(pk=batch_id, claimed_by=holder).update(
            claimed_by="", heartbeat_at=None
        ):
            logger.warning("freed the lease of dead worker %s on batch %s", holder, batch_id)
            freed.append(batch_id)
    return freed


def stale_batches():
    """Active batches whose lease is free or stale and whose task may be lost
    (a worker killed mid-batch, a broker that lost the message)."""
    quiet_since = stale_before()
    return Batch.objects.filter(status__in=Batch.ACTIVE).filter(
        Q(heartbeat_at__lt=quiet_since) | Q(heartbeat_at=None, updated_at__lt=quiet_since)
    )


def requeue_stale_batches():
    """The watchdog: puts batches no live worker holds back on the queue."""
    freed = reap_dead_leases()
    ids = sorted(set(freed) | set(stale_batches().values_list("pk", flat=True)))
    for batch_id in ids:
        logger.warning("requeueing stale batch %s", batch_id)
        Batch.objects.filter(pk=batch_id).update(updated_at=Now())
        queueing.enqueue_batch(batch_id)
    return ids


def stuck_for(batch_id, holder, now=None):
    """Seconds the batch, held by `holder` with a fresh lease, has made no progress,
    if that is over VLLM_BATCH_STUCK_MINUTES; else None. Measured on the database's
    clock (which wrote progress_at) unless `now` is given."""
    row = (
        Batch.objects.filter(pk=batch_id, claimed_by=holder, status__in=Batch.ACTIVE)
        .exclude(progress_at=None)
        .annotate(db_now=Now())
        .values_list("progress_at", "db_now")
        .first()
    )
    if row is None:
        return None
    progress_at, db_now = row
    quiet = ((now or db_now) - progress_at).total_seconds()
    return quiet if quiet > settings.VLLM_BATCH["STUCK_MINUTES"] * 60 else None
