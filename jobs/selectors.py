"""Reads: for the API, always scoped to the caller; for the worker, a batch's saved lines."""

from collections import defaultdict
from datetime import timedelta

from django.db.models import Count, Q, Sum
from django.utils import timezone

from batchsite.errors import NotFound

from .leases import stale_before
from .models import Batch, BatchResult, File, unix


def file_get(*, owner, file_id):
    file = File.objects.filter(owner=owner, pk=file_id).first()
    if file is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return file


def batch_get(*, owner, batch_id):
    batch = Batch.objects.filter(owner=owner, pk=batch_id).first()
    if batch is None:
        raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
    batch_estimates_attach([batch])
    return batch


def _page(queryset, *, after, limit, descending, param, cursor_queryset=None):
    """Cursor pagination on (created_at, id): stable when rows share a second.
    The cursor may be any of the caller's rows, also one the filters leave out."""
    if after:
        cursor = (cursor_queryset or queryset).filter(pk=after).values("created_at", "pk").first()
        if cursor is None:
            raise NotFound(f"No such object for 'after': {after}", param=param)
        if descending:
            queryset = queryset.filter(
                Q(created_at__lt=cursor["created_at"]) | Q(created_at=cursor["created_at"], pk__lt=cursor["pk"])
            )
        else:
            queryset = queryset.filter(
                Q(created_at__gt=cursor["created_at"]) | Q(created_at=cursor["created_at"], pk__gt=cursor["pk"])
            )
    ordering = ("-created_at", "-pk") if descending else ("created_at", "pk")
    rows = list(queryset.order_by(*ordering)[: limit + 1])
    return rows[:limit], len(rows) > limit


def as_list(rows, has_more):
    data = [row.to_openai() for row in rows]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def file_list(*, owner, purpose=None, after=None, limit=10000, order="desc"):
    owned = File.objects.filter(owner=owner)
    queryset = owned.filter(purpose=purpose) if purpose else owned
    return as_list(
        *_page(queryset, after=after, limit=limit, descending=order == "desc", param="after", cursor_queryset=owned)
    )


def batch_list(*, owner, after=None, limit=20, status=None, model=None, created_after=None, created_before=None):
    """The caller's batches, newest first; the filters are extensions to OpenAI's list."""
    owned = Batch.objects.filter(owner=owner)
    queryset = owned
    if status:
        queryset = queryset.filter(status=status)
    if model:
        queryset = queryset.filter(model=model)
    if created_after is not None:
        queryset = queryset.filter(created_at__gte=created_after)
    if created_before is not None:
        queryset = queryset.filter(created_at__lt=created_before)
    rows, has_more = _page(queryset, after=after, limit=limit, descending=True, param="after", cursor_queryset=owned)
    return as_list(batch_estimates_attach(rows), has_more)


def _seconds(start, end):
    return max((end - start).total_seconds(), 0.0)


def _request_rates(now):
    """Requests per second of processing by model, and over all models, from the
    batches completed in the last 24 hours: what the queue's estimates assume."""
    rows = Batch.objects.filter(
        status=Batch.Status.COMPLETED,
        completed_at__gte=now - timedelta(hours=24),
        in_progress_at__isnull=False,
    ).values_list("model", "in_progress_at", "completed_at", "completed_requests", "failed_requests")
    done, seconds = defaultdict(int), defaultdict(float)
    for model, started, finished, completed, failed in rows:
        for key in (model, None):
            done[key] += completed + failed
            seconds[key] += _seconds(started, finished)
    return {key: done[key] / seconds[key] for key in done if seconds[key] > 0 and done[key] > 0}


def _running(batch, now):
    done = batch.completed_requests + batch.failed_requests
    elapsed = _seconds(batch.in_progress_at, now) if batch.in_progress_at else 0.0
    rate = done / elapsed if elapsed > 0 and done else None
    remaining = max(batch.total_requests - done, 0)
    return {
        "id": batch.id,
        "model": batch.model,
        "total_requests": batch.total_requests,
        "done_requests": done,
        "progress": round(done / batch.total_requests, 4) if batch.total_requests else 0.0,
        "output_tokens_per_second": round(batch.output_tokens / elapsed, 3) if elapsed > 0 else None,
        "eta_seconds": round(remaining / rate, 1) if rate else None,
    }


# The order workers take waiting batches in (leases.claim_next adds the model affinity).
QUEUE_ORDER = ("-priority", "queued_at", "pk")


def queue_plan(*, workers_online=None, now=None):
    """Every batch that runs or waits, in the order the workers take it (priority,
    then age; affinity to a loaded model is left out), each with its estimates:
    {"running": [(batch, row)], "waiting": [(batch, position, start, finish)]}
    with start and finish in seconds from now (None when no rate is known).
    Estimates assume the workers share the work evenly at the request rate of
    recently completed batches of the same model; without `workers_online`, the
    batches running now count the workers."""
    now = now or timezone.now()
    active = Batch.objects.filter(status__in=(Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS))
    is_running = Q(heartbeat_at__gte=stale_before()) & ~Q(claimed_by="")
    running = list(active.filter(is_running).order_by(*QUEUE_ORDER))
    waiting = list(active.exclude(is_running).order_by(*QUEUE_ORDER))
    rates = _request_rates(now)
    share = max(workers_online if workers_online is not None else len(running), 1)

    running_rows = [(batch, _running(batch, now)) for batch in running]
    # Work ahead, in seconds of one worker; None once anything ahead cannot be estimated.
    ahead = 0.0
    for _batch, row in running_rows:
        ahead = None if ahead is None or row["eta_seconds"] is None else ahead + row["eta_seconds"]
    planned = []
    for position, batch in enumerate(waiting, start=1):
        rate = rates.get(batch.model) or rates.get(None)
        remaining = max(batch.total_requests - batch.completed_requests - batch.failed_requests, 0)
        own = None if rate is None else remaining / rate
        start = None if ahead is None else ahead / share
        finish = None if start is None or own is None else start + own
        planned.append((batch, position, start, finish))
        ahead = None if ahead is None or own is None else ahead + own
    return {"running": running_rows, "waiting": planned}


def batch_queue(*, owner, workers_online, now=None):
    """What runs and what waits (queue_plan); all batches count for positions and
    estimates, only the caller's are described."""
    plan = queue_plan(workers_online=workers_online, now=now)
    queued = [
        {
            "id": batch.id,
            "model": batch.model,
            "status": batch.status,
            "total_requests": batch.total_requests,
            "position": position,
            "created_at": unix(batch.created_at),
            "estimated_start_seconds": None if start is None else round(start, 1),
        }
        for batch, position, start, _finish in plan["waiting"]
        if batch.owner_id == owner.pk
    ]
    return {
        "object": "queue",
        "workers_online": workers_online,
        "running": [row for batch, row in plan["running"] if batch.owner_id == owner.pk],
        "running_total": len(plan["running"]),
        "queued": queued,
        "queued_total": len(plan["waiting"]),
    }


def batch_estimates_attach(batches, *, now=None):
    """Sets each active batch's queue_position, estimated_start_at and
    estimated_finish_at (Batch.to_openai's extension fields) from queue_plan."""
    batches = list(batches)
    if not any(batch.status in Batch.ACTIVE for batch in batches):
        return batches
    now = now or timezone.now()
    plan = queue_plan(now=now)
    at = {}
    for batch, row in plan["running"]:
        eta = row["eta_seconds"]
        at[batch.pk] = (None, None, None if eta is None else now + timedelta(seconds=eta))
    for batch, position, start, finish in plan["waiting"]:
        at[batch.pk] = (
            position,
            None if start is None else now + timedelta(seconds=start),
            None if finish is None else now + timedelta(seconds=finish),
        )
    for batch in batches:
        position, start, finish = at.get(batch.pk, (None, None, None))
        batch.queue_estimate = {
            "queue_position": position,
            "estimated_start_at": unix(start),
            "estimated_finish_at": unix(finish),
        }
    return batches


def batch_stats(*, owner, now=None):
    """The caller's batches (every owner's for owner=None: the admin's dashboard) in
    figures: totals by status and model, success rate, average processing time,
    tokens, and the last 24 hours by hour."""
    now = now or timezone.now()
    owned = Batch.objects.all() if owner is None else Batch.objects.filter(owner=owner)
    by_status = dict(owned.values_list("status").annotate(n=Count("pk")).order_by())
    by_model = {
        row.pop("model"): row
        for row in owned.values("model")
        .annotate(
            batches=Count("pk"),
            requests_completed=Sum("completed_requests"),
            requests_failed=Sum("failed_requests"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
        )
        .order_by("model")
    }
    finished = sum(by_status.get(status, 0) for status in Batch.FINISHED)
    durations = [
        _seconds(started, finished_at)
        for started, finished_at in owned.filter(
            status=Batch.Status.COMPLETED, in_progress_at__isnull=False, completed_at__isnull=False
        ).values_list("in_progress_at", "completed_at")
    ]

    first_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    hours = [first_hour + timedelta(hours=i) for i in range(24)]
    buckets = {hour: {"batches_completed": 0, "requests_completed": 0, "output_tokens": 0} for hour in hours}
    for finished_at, completed, tokens in owned.filter(
        status=Batch.Status.COMPLETED, completed_at__gte=first_hour, completed_at__lte=now
    ).values_list("completed_at", "completed_requests", "output_tokens"):
        bucket = buckets[finished_at.replace(minute=0, second=0, microsecond=0)]
        bucket["batches_completed"] += 1
        bucket["requests_completed"] += completed
        bucket["output_tokens"] += tokens

    return {
        "object": "stats",
        "total_batches": sum(by_status.values()),
        "by_status": {status: by_status.get(status, 0) for status in Batch.Status.values},
        "by_model": [{"model": model, **row} for model, row in by_model.items()],
        "success_rate": round(by_status.get(Batch.Status.COMPLETED, 0) / finished, 4) if finished else None,
        "average_duration_seconds": round(sum(durations) / len(durations), 3) if durations else None,
        "input_tokens": sum(row["input_tokens"] or 0 for row in by_model.values()),
        "output_tokens": sum(row["output_tokens"] or 0 for row in by_model.values()),
        "hourly": [{"start": unix(hour), **buckets[hour]} for hour in hours],
    }


def batch_done_lines(batch_id):
    """The input lines of the batch that have a saved result."""
    return set(BatchResult.objects.filter(batch_id=batch_id).values_list("line", flat=True))
