"""Reads: the model registry (which model serves what), and the workers for the
realtime API and the admin console (who is around, how fresh, doing what)."""

from datetime import timedelta

from django.conf import settings
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone

from batchsite.errors import ApiError

from .models import RegisteredModel, Supervisor, Worker

RECENT = timedelta(hours=1)
CARD_LIMIT = 20


def model_list_active():
    return RegisteredModel.objects.filter(is_active=True).order_by("name")


def model_get_active(name):
    """The registered, active model `name`, or None."""
    return RegisteredModel.objects.filter(name=name, is_active=True).first()


def model_for_endpoint(name, endpoint):
    """The active model `name` if it serves `endpoint` (an OpenAI path); else
    ApiError 404 `model_not_found` or 400 `model_not_supported`."""
    model = model_get_active(name)
    if model is None:
        raise ApiError(
            f"The model '{name}' does not exist or is not registered on this server.",
            code="model_not_found",
            param="model",
            status_code=404,
        )
    if not model.serves(endpoint):
        kind = "an embedding" if model.serves_embeddings else "a generative"
        raise ApiError(
            f"The model '{name}' is {kind} model and cannot serve {endpoint}.",
            code="model_not_supported",
            param="model",
        )
    return model


def model_problem(name, endpoint):
    """None when the model `name` may serve `endpoint`, else (code, message): for batch validation."""
    try:
        model_for_endpoint(name, endpoint)
    except ApiError as exc:
        return exc.code, exc.message
    return None


FRESHNESS_ORDER = {Worker.Freshness.ONLINE: 0, Worker.Freshness.STALE: 1, Worker.Freshness.OFFLINE: 2}
GONE_STATES = (Worker.State.STOPPED, Worker.State.LOST)


def worker_list_recent(*, now=None, limit=CARD_LIMIT):
    """Workers online first, then newest first, with their batch, leaving out those
    stopped or lost more than an hour ago. A worker that died without stopping stays
    listed (offline, then lost with the reason): that is news."""
    now = now or timezone.now()
    workers = Worker.objects.exclude(state__in=GONE_STATES, last_seen__lt=now - RECENT)
    workers = list(workers.select_related("current_batch").order_by("-last_seen")[: limit and limit * 5])
    workers.sort(key=lambda w: (FRESHNESS_ORDER[w.freshness(now)], -w.last_seen.timestamp()))
    return workers[:limit]


def worker_list_live(*, now=None, limit=CARD_LIMIT):
    """The heartbeat card's rows: workers not stopped or lost, online first; and how many others are recent."""
    recent = worker_list_recent(now=now, limit=None)
    live = [w for w in recent if w.state not in GONE_STATES]
    return live[:limit], len(recent) - len(live[:limit])


def supervisor_list_recent(*, now=None):
    """The watchdogs running, and those that stopped or gave up within the hour."""
    now = now or timezone.now()
    return list(Supervisor.objects.filter(last_check__gte=now - RECENT).order_by("-last_check"))


def worker_list_online(*, now=None):
    now = now or timezone.now()
    return [w for w in worker_list_recent(now=now, limit=None) if w.freshness(now) == Worker.Freshness.ONLINE]


def idle_workers(*, besides=""):
    """Online workers that are idle, but the one named `besides`."""
    return [w for w in worker_list_online() if w.name != besides and w.state == Worker.State.IDLE]


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


def _online(workers):
    return worker_filter_freshness(queryset=workers.exclude(realtime_url=""), freshness=Worker.Freshness.ONLINE)


def realtime_worker_for(model, endpoint=None):
    """An online worker holding `model` (when None: any model that serves `endpoint`,
    or any model), idle ones first."""
    workers = Worker.objects.exclude(current_model="").filter(state__in=[Worker.State.IDLE, Worker.State.PROCESSING])
    if model:
        workers = workers.filter(current_model=model)
    elif endpoint:
        workers = workers.filter(current_model__in=[m.name for m in model_list_active() if m.serves(endpoint)])
    return min(_online(workers), key=lambda w: (w.state != Worker.State.IDLE, -w.last_seen.timestamp()), default=None)


def swap_worker_for(model):
    """The online worker best placed to load `model` on demand: one already
    loading it, else an idle one (an empty one first), else one running a batch."""
    states = [Worker.State.IDLE, Worker.State.PROCESSING, Worker.State.LOADING]
    workers = _online(Worker.objects.filter(state__in=states))

    def rank(w):
        if w.current_model == model:
            return 0
        if w.state == Worker.State.IDLE:
            return 1 if not w.current_model else 2
        return 3

    return min(workers, key=lambda w: (rank(w), -w.last_seen.timestamp()), default=None)


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
        "lost_reason": worker.lost_reason,
        "lost_text": seconds_ago((now - worker.lost_at).total_seconds()) if worker.lost_at else "",
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
    live, others = worker_list_live(now=now)
    return {
        "now": now.isoformat(),
        "heartbeat_seconds": settings.VLLM_BATCH["HEARTBEAT_SECONDS"],
        "workers": [worker_report(w, now=now) for w in live],
        "others": others,
        "others_url": reverse("admin:workers_worker_changelist") + "?show=gone",
    }
