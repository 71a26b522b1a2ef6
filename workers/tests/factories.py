"""Worker rows as a heartbeat would write them."""

from datetime import timedelta

from django.utils import timezone

from workers.models import Worker


def make_worker(*, hostname="elsewhere", pid=42, age=0.0, **fields):
    """A worker row last seen `age` seconds ago."""
    now = timezone.now()
    fields = {
        "cluster_name": "vllm-batch",
        "state": Worker.State.IDLE,
        "started_at": now - timedelta(minutes=5),
        "last_seen": now - timedelta(seconds=age),
        **fields,
    }
    return Worker.objects.create(name=f"{hostname}:{pid}", hostname=hostname, pid=pid, **fields)
