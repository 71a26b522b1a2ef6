"""A large batch split into ranges of its input lines that several workers run at
once (VLLM_BATCH_SPLIT_REQUESTS; off by default).

The worker holding the batch's lease (jobs.leases) splits it once it is
validated, works on ranges itself, and finalizes the batch once every range is
done; other workers holding the batch's model help by taking ranges. A range is
taken like a lease (free, or its holder's heartbeat stale: SKIP LOCKED on
PostgreSQL, a conditional update elsewhere), its results are saved only while
its holder still holds it (jobs.services.batch_results_save), and it is done once
every request in it has a saved result. A worker that dies leaves its ranges to
go stale: the next worker to ask takes them over and runs the requests that have
no result yet. The output file is written from the results in line order, as for
any batch.
"""

import json
import logging

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Now

from . import leases
from .models import Batch, BatchRange, BatchResult

logger = logging.getLogger(__name__)


def _line_starts(stream):
    """Yields (line number, byte offset, is a request) for every line of the stream."""
    offset = 0
    for number, raw in enumerate(iter(stream.readline, b""), start=1):
        yield number, offset, bool(raw.strip())
        offset += len(raw)


def split(batch):
    """Splits a validated batch into ranges of VLLM_BATCH_SPLIT_REQUESTS requests,
    once; returns how many ranges it has (0: not split)."""
    size = settings.VLLM_BATCH["SPLIT_REQUESTS"]
    existing = BatchRange.objects.filter(batch=batch).count()
    if existing or size <= 0 or batch.total_requests <= size:
        return existing
    ranges, current = [], None
    with default_storage.open(batch.input_file.storage_name, "rb") as stream:
        for number, offset, is_request in _line_starts(stream):
            if not is_request:
                continue
            if current is None or current["requests"] == size:
                current = {"first_line": number, "offset": offset, "requests": 0}
                ranges.append(current)
            current["requests"] += 1
            current["end_line"] = number + 1
    BatchRange.objects.bulk_create([BatchRange(batch=batch, **r) for r in ranges], ignore_conflicts=True)
    logger.info("batch %s split into %d ranges of up to %d requests", batch.pk, len(ranges), size)
    return len(ranges)


def is_split(batch_id):
    return BatchRange.objects.filter(batch_id=batch_id).exists()


def _free():
    return Q(done_at=None) & (Q(claimed_by="") | Q(heartbeat_at=None) | Q(heartbeat_at__lt=leases.stale_before()))


def claim(batch_id, holder):
    """Takes the batch's first range that is not done and free (or stale); returns
    it, or None when none is left to take."""
    candidates = BatchRange.objects.filter(_free(), batch_id=batch_id).exclude(claimed_by=holder).order_by("first_line")
    if connection.features.has_select_for_update_skip_locked:
        with transaction.atomic():
            pk = candidates.select_for_update(skip_locked=True).values_list("pk", flat=True).first()
            if pk is not None:
                BatchRange.objects.filter(pk=pk).update(claimed_by=holder, heartbeat_at=Now())
    else:
        pk = None
        for candidate in candidates.values_list("pk", flat=True)[:20]:
            if BatchRange.objects.filter(_free(), pk=candidate).update(claimed_by=holder, heartbeat_at=Now()):
                pk = candidate
                break
    if pk is None:
        return None
    taken = BatchRange.objects.get(pk=pk)
    logger.info("batch %s: %s took lines %d-%d", batch_id, holder, taken.first_line, taken.end_line - 1)
    return taken


def requests(batch, holder):
    """Yields (line, request dict) for the requests without a result in the ranges
    this holder takes, one range after another (the next is taken only when the
    caller asks for more, so the engine's window stays full across ranges) until
    none is left to take."""
    while (taken := claim(batch.pk, holder)) is not None:
        saved = set(
            BatchResult.objects.filter(
                batch_id=batch.pk, line__gte=taken.first_line, line__lt=taken.end_line
            ).values_list("line", flat=True)
        )
        if len(saved) >= taken.requests:
            _mark_done([taken.pk], holder)
            continue
        with default_storage.open(batch.input_file.storage_name, "rb") as stream:
            stream.seek(taken.offset)
            for number, raw in enumerate(iter(stream.readline, b""), start=taken.first_line):
                if number >= taken.end_line:
                    break
                if number not in saved and raw.strip():
                    yield number, json.loads(raw)


def check_held(batch_id, holder, lines):
    """Inside the saving transaction: refreshes the heartbeat of the holder's
    ranges and locks them (PostgreSQL), so no other worker takes one over before
    the commit; raises leases.LeaseLost when a line is in no range it holds."""
    held = list(
        BatchRange.objects.select_for_update()
        .filter(batch_id=batch_id, claimed_by=holder, done_at=None)
        .values_list("pk", "first_line", "end_line")
    )
    for line in lines:
        if not any(first <= line < end for _, first, end in held):
            raise leases.LeaseLost(batch_id, holder)
    BatchRange.objects.filter(pk__in=[pk for pk, _, _ in held]).update(heartbeat_at=Now())
    return held


def mark_done(batch_id, holder, held, lines):
    """Inside the saving transaction: marks done the held ranges the saved lines
    belong to once every request in them has a result."""
    touched = [pk for pk, first, end in held if any(first <= line < end for line in lines)]
    if not touched:
        return
    finished = []
    for pk, requests_in, first, end in BatchRange.objects.filter(pk__in=touched).values_list(
        "pk", "requests", "first_line", "end_line"
    ):
        if BatchResult.objects.filter(batch_id=batch_id, line__gte=first, line__lt=end).count() >= requests_in:
            finished.append(pk)
    _mark_done(finished, holder)


def _mark_done(pks, holder):
    if pks:
        BatchRange.objects.filter(pk__in=pks).update(done_at=Now(), done_by=holder, claimed_by="", heartbeat_at=None)


class RangeKeeper(leases.LeaseKeeper):
    """Keeps the heartbeat of the holder's ranges fresh from a thread, and the
    batch's own lease too when the holder holds it (`holds_batch`)."""

    def __init__(self, batch_id, holder, *, holds_batch):
        super().__init__(batch_id, holder)
        self.holds_batch = holds_batch

    def beat(self):
        if self.holds_batch:
            super().beat()
        BatchRange.objects.filter(batch_id=self.batch_id, claimed_by=self.holder, done_at=None).update(
            heartbeat_at=Now()
        )


def release(batch_id, holder):
    """Frees the holder's ranges that are not done (it stops: its slice ended, it
    was cancelled, it failed), for the next worker to take at once."""
    return BatchRange.objects.filter(batch_id=batch_id, claimed_by=holder, done_at=None).update(
        claimed_by="", heartbeat_at=None
    )


def left(batch_id):
    """Ranges of the batch not done yet (0 for a batch that is not split)."""
    return BatchRange.objects.filter(batch_id=batch_id, done_at=None).count()


def helpable(*, allowed_models=(), held_model=None):
    """The id of a running batch with a range free to take, of a model this worker
    may run (`allowed_models`, empty: any) and, when it holds a model, of that one
    (a worker swaps its model for its own batches, never to help); by priority,
    then turn. None when there is none."""
    free = BatchRange.objects.filter(_free(), batch=OuterRef("pk"))
    queryset = Batch.objects.filter(Exists(free), status=Batch.Status.IN_PROGRESS)
    if allowed_models:
        queryset = queryset.filter(model__in=list(allowed_models))
    if held_model:
        queryset = queryset.filter(model=held_model)
    return queryset.order_by("-priority", "queued_at", "pk").values_list("pk", flat=True).first()
