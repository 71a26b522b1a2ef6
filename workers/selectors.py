"""Reads about workers for the admin console: who is around, how fresh, doing what."""

from datetime import timedelta

from django.conf import settings
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone

from .models import Worker

RECENT = timedelta(hours=1)
CARD_LIMIT = 20


def worker_list_recent(*, now=None, limit=CARD_LIMIT):
    """Workers newest first, with their batch, leaving out those stopped for more than
    an hour. A worker that died without stopping stays listed (offline): that is news."""
    now = now or timezone.now()
    workers = Worker.objects.exclude(state=Worker.State.STOPPED, last_seen__lt=now - RECENT)
    workers = workers.select_related("current_batch")
    return list(workers.order_by("-last_seen")[:limit])


def worker_list_online(*, now=None):
    now = now or timezone.now()
    return [w for w in worker_list_recent(now=now, limit=None) if w.freshness(now) == Worker.Freshness.ONLINE]


def worker_filter_freshness(*, queryset, freshness, now=None):
    """Narrows `queryset` to workers of one freshness. Only workers with a recent
    beat can be online or stale, so the per-row check (is the pid alive?) runs
    on those few and never on the whole history."""
    now = now or timezone.now()
    horizon = now - timedelta(seconds=6 * settings.VLLM_BATCH["HEARTBEAT_SECONDS"])
    candidates = queryset.exclude(state=Worker.State.STOPPED).filter(last_seen__gte=horizon)
    alive = {w.pk: w.freshness(now) for w in candidates}
    if freshness == Worker.Freshness.OFFLINE:
        return queryset.exclude(pk__in=[pk for pk, f in alive.items() if f != Worker.Freshness.OFFLINE])
    return queryset.filter(pk__in=[pk for pk, f in alive.items() if f == freshness])


def seconds_ago(seconds):
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def memory_text(worker):
    if worker.memory_used is None or not worker.memory_total:
        return ""
    kind = "GPU" if worker.memory_kind == "gpu" else "host"
    return f"{kind} {filesizeformat(worker.memory_used)} / {filesizeformat(worker.memory_total)}"


def _batch_report(batch):
    return {
        "id": batch.pk,
        "status": batch.status,
        "done": batch.done_requests,
        "total": batch.total_requests,
        "progress": round(batch.progress, 4),
        "url": reverse("admin:jobs_batch_change", args=[batch.pk]),
    }


def worker_report(worker, *, now=None):
    """One worker as the heartbeat card shows it: plain data, texts ready to display."""
    now = now or timezone.now()
    batch = worker.current_batch
    return {
        "id": worker.pk,
        "name": worker.name,
        "hostname": worker.hostname,
        "pid": worker.pid,
        "cluster": worker.cluster_name,
        "state": worker.state,
        "state_label": worker.get_state_display(),
        "freshness": worker.freshness(now),
        "model": worker.current_model,
        "batch": _batch_report(batch) if batch else None,
        "last_seen": worker.last_seen.isoformat(),
        "last_seen_text": seconds_ago((now - worker.last_seen).total_seconds()),
        "memory": {
            "kind": worker.memory_kind,
            "used": worker.memory_used,
            "total": worker.memory_total,
            "text": memory_text(worker),
        },
        "url": reverse("admin:workers_worker_change", args=[worker.pk]),
    }


def heartbeat_report(*, now=None):
    now = now or timezone.now()
    return {
        "now": now.isoformat(),
        "heartbeat_seconds": settings.VLLM_BATCH["HEARTBEAT_SECONDS"],
        "workers": [worker_report(w, now=now) for w in worker_list_recent(now=now)],
    }
