"""GET /health (liveness: the process answers) and GET /ready (readiness: what a
request needs is there). Unauthenticated, for load balancers and orchestrators:
the bodies name the checks and say what failed, never a path, URL or secret."""

import logging
import uuid

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from workers.selectors import worker_list_online

logger = logging.getLogger(__name__)


def check_database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_storage():
    # A real file saved and deleted through the files' storage (a directory, or a
    # bucket): a read-only or full disk, or a bucket refusing writes, fails here.
    name = default_storage.save(f".ready/{uuid.uuid4().hex}", ContentFile(b"ok"))
    default_storage.delete(name)


def check_broker():
    """The task queue's broker: Redis is pinged; the ORM broker is the database."""
    if settings.Q_CLUSTER.get("redis"):
        from django_q.brokers import get_broker

        if not get_broker().ping():
            raise ConnectionError("no answer to PING")
    else:
        check_database()


def check_worker():
    if not worker_list_online():
        raise LookupError("no worker online")


CHECKS = {"database": check_database, "storage": check_storage, "broker": check_broker, "worker": check_worker}


def readiness():
    """{check: "ok" | "failed: <exception class>" | "skipped"}, and whether all passed."""
    results = {}
    for name, check in CHECKS.items():
        if name == "worker" and not settings.VLLM_BATCH["READY_REQUIRES_WORKER"]:
            results[name] = "skipped"
            continue
        if name == "worker" and results.get("database") != "ok":
            results[name] = "failed: database unreachable"
            continue
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - any failure makes the node not ready
            logger.warning("readiness check %s failed: %s", name, exc)
            # The class name only: messages can carry hosts, paths or credentials.
            results[name] = f"failed: {type(exc).__name__}"
        else:
            results[name] = "ok"
    ok = all(value in ("ok", "skipped") for value in results.values())
    return ok, results


@never_cache
@require_GET
def health(request):
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def ready(request):
    ok, results = readiness()
    failing = sorted(name for name, value in results.items() if value.startswith("failed"))
    body = {"status": "ready" if ok else "not_ready", "checks": results, "failing": failing}
    return JsonResponse(body, status=200 if ok else 503)
