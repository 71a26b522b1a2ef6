"""What `manage.py worker ...` (and `vllm-batch worker ...`) does, as plain functions."""

import urllib.error
import urllib.request

from django.conf import settings
from django.utils import timezone
from django_q.brokers import get_broker

from jobs.models import Batch

from .. import selectors, services
from ..models import Worker, WorkerCommand

ACTIONS = {
    "restart": WorkerCommand.Action.RESTART,
    "clear-gpu": WorkerCommand.Action.CLEAR_GPU,
    "kill": WorkerCommand.Action.KILL,
}


def api_answers(url, timeout=3.0):
    """(ok, detail): whether the web API answers at `url` (…/v1)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/openapi.json", timeout=timeout) as response:
            return response.status == 200, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, str(getattr(exc, "reason", exc))


def queued_tasks():
    try:
        return get_broker().queue_size()
    except Exception:  # a broker that is down must not break `status`
        return None


def status_report(api_url):
    now = timezone.now()
    workers = []
    for worker in selectors.worker_list_recent(now=now, limit=50):
        batch = worker.current_batch if worker.current_batch_id else None
        workers.append(
            {
                "id": worker.pk,
                "name": worker.name,
                "host": worker.hostname,
                "pid": worker.pid,
                "cluster": worker.cluster_name,
                "state": worker.state,
                "freshness": worker.freshness(now),
                "model": worker.current_model or None,
                "batch": worker.current_batch_id,
                "batch_progress": round(batch.progress, 4) if batch else None,
                "last_seen": worker.last_seen.isoformat(),
                "last_seen_seconds_ago": int((now - worker.last_seen).total_seconds()),
                "memory_kind": worker.memory_kind,
                "memory_used": worker.memory_used,
                "memory_total": worker.memory_total,
                "lost_at": worker.lost_at.isoformat() if worker.lost_at else None,
                "lost_reason": worker.lost_reason or None,
            }
        )
    watchdogs = [
        {
            "name": s.name,
            "cluster": s.cluster_name,
            "state": s.state,
            "cluster_pid": s.cluster_pid,
            "restarts": s.restarts,
            "last_reason": s.last_reason or None,
            "last_restart_at": s.last_restart_at.isoformat() if s.last_restart_at else None,
        }
        for s in selectors.supervisor_list_recent(now=now)
    ]
    ok, detail = api_answers(api_url)
    return {
        "workers": workers,
        "watchdogs": watchdogs,
        "online": sum(1 for w in workers if w["freshness"] == Worker.Freshness.ONLINE),
        "api": {"url": api_url, "answers": ok, "detail": detail},
        "batches": {
            "validating": Batch.objects.filter(status=Batch.Status.VALIDATING).count(),
            "in_progress": Batch.objects.filter(status=Batch.Status.IN_PROGRESS).count(),
            "cancelling": Batch.objects.filter(status=Batch.Status.CANCELLING).count(),
        },
        "queued_tasks": queued_tasks(),
    }


def _mib(value):
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def render_status(report):
    lines = []
    if not report["workers"]:
        lines.append("No worker has reported.")
    else:
        lines.append(f"{'ID':>4}  {'WORKER':<24} {'FRESHNESS':<9} {'STATE':<13} {'MODEL':<22} {'SEEN':>6}  MEMORY")
        for w in report["workers"]:
            memory = f"{w['memory_kind'] or '?'} {_mib(w['memory_used'])} / {_mib(w['memory_total'])}"
            batch = f"  batch {w['batch']} {w['batch_progress']:.0%}" if w["batch"] else ""
            lost = f"  lost: {w['lost_reason']}" if w["lost_reason"] else ""
            lines.append(
                f"{w['id']:>4}  {w['name']:<24} {w['freshness']:<9} {w['state']:<13} {(w['model'] or '-'):<22} "
                f"{w['last_seen_seconds_ago']:>5}s  {memory}{batch}{lost}"
            )
    for d in report["watchdogs"]:
        why = f"; last: {d['last_reason']}" if d["last_reason"] else ""
        lines.append(f"Watchdog {d['name']} ({d['cluster']}): {d['state']}, {d['restarts']} restart(s){why}")
    api = report["api"]
    lines.append(f"API {api['url']}: {'answers' if api['answers'] else 'does not answer'} ({api['detail']})")
    b = report["batches"]
    queued = "?" if report["queued_tasks"] is None else report["queued_tasks"]
    lines.append(
        f"Batches: {b['validating']} validating, {b['in_progress']} in progress, {b['cancelling']} cancelling; "
        f"{queued} tasks queued"
    )
    lines.append(f"{report['online']} worker(s) online")
    return "\n".join(lines)


def select_workers(worker=None, all_online=False):
    """The workers a control command targets: one by id or name, or every online one."""
    if worker:
        query = Worker.objects.filter(name=worker) if not str(worker).isdigit() else Worker.objects.filter(pk=worker)
        return list(query)
    if all_online:
        return selectors.worker_list_online()
    return []


def send(action, workers, *, wait=False, timeout=None, requested_by="cli"):
    """Sends `action` to each worker; returns [(worker, command, outcome text)]."""
    timeout = timeout if timeout is not None else settings.VLLM_BATCH["HEARTBEAT_SECONDS"] * 3 + 60
    results = []
    for worker in workers:
        if ACTIONS[action] == WorkerCommand.Action.KILL:
            command, how = services.worker_kill(
                worker=worker, requested_by=requested_by, wait=timeout if wait else None
            )
            if how == "pending":
                outcome = f"{worker.name} is on another host and has not answered: it cannot be killed from here"
            else:
                outcome = command.result
        else:
            command = services.command_create(worker=worker, action=ACTIONS[action], requested_by=requested_by)
            if wait:
                command = services.command_wait(command=command, timeout=timeout)
            outcome = command.result if command.is_finished else f"sent ({command.status})"
        results.append((worker, command, outcome))
    return results
