"""GET /metrics: Prometheus text, read from the database at scrape time.

The numbers are made by worker processes (batches, heartbeats, deliveries) and by
the web (Label Studio events, predictions), so no process's own memory holds them:
one Collector reads the rows when Prometheus scrapes. Counters are sums over rows
that only grow, so they survive restarts of any process without going backwards
(they drop only when rows are deleted, as a counter reset, which Prometheus's
rate() handles). The one exception, the realtime latency histogram, is observed
in the web processes and summed from prometheus_client's multiprocess files."""

import hmac
import math
import os
from collections import defaultdict
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from batchsite.errors import error_envelope
from jobs.models import Batch, WebhookDelivery
from labeling.models import PredictionLog, WebhookEvent
from workers.models import Worker
from workers.realtime import latency
from workers.selectors import worker_list_recent

PREFIX = "vllm_batch"
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 90)


def histogram(name, doc, values_by_label, buckets, label="model"):
    """A HistogramMetricFamily from raw observations, one series per label value."""
    family = HistogramMetricFamily(name, doc, labels=[label] if label else None)
    for key, values in sorted(values_by_label.items()):
        cumulative = []
        for bound in (*buckets, math.inf):
            cumulative.append(("+Inf" if bound == math.inf else str(float(bound)), sum(v <= bound for v in values)))
        family.add_metric([key] if label else [], cumulative, sum_value=sum(values))
    return family


def _by_model(queryset, **aggregates):
    return {row["model"]: row for row in queryset.values("model").annotate(**aggregates).order_by("model")}


class DatabaseCollector:
    def describe(self):
        # Registering must not query the database (it happens at import).
        return []

    def collect(self):
        yield from self.batches()
        yield from self.workers()
        yield from self.webhooks()
        yield from self.labeling()

    def batches(self):
        counts = dict(Batch.objects.values_list("status").annotate(n=Count("id")).order_by())
        family = GaugeMetricFamily(f"{PREFIX}_batches", "Batches by status.", labels=["status"])
        for status in Batch.Status.values:
            family.add_metric([status], counts.get(status, 0))
        yield family

        queued = Batch.objects.filter(status__in=(Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS)).aggregate(
            total=Sum("total_requests"), done=Sum("completed_requests"), failed=Sum("failed_requests")
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_queued_requests",
            "Requests of batches validating or in progress that are not done yet.",
            value=(queued["total"] or 0) - (queued["done"] or 0) - (queued["failed"] or 0),
        )

        sums = _by_model(
            Batch.objects.all(),
            completed=Sum("completed_requests"),
            failed=Sum("failed_requests"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
        )
        counters = {
            "completed": ("requests_completed", "Requests that got a response, over all batches."),
            "failed": ("requests_failed", "Requests that ended in the error file, over all batches."),
            "input_tokens": ("input_tokens", "Prompt tokens of all batches' requests."),
            "output_tokens": ("output_tokens", "Generated tokens of all batches' requests."),
        }
        for field, (name, doc) in counters.items():
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["model"])
            for model, row in sums.items():
                family.add_metric([model], row[field] or 0)
            yield family

        since = timezone.now() - timedelta(minutes=settings.VLLM_BATCH["METRICS_THROUGHPUT_MINUTES"])
        rows = Batch.objects.filter(
            status=Batch.Status.COMPLETED, in_progress_at__isnull=False, completed_at__isnull=False
        ).values_list("model", "in_progress_at", "completed_at", "output_tokens")
        durations = defaultdict(list)
        recent_tokens = defaultdict(int)
        recent_seconds = defaultdict(float)
        for model, started, finished, tokens in rows.iterator():
            seconds = max((finished - started).total_seconds(), 0.0)
            durations[model].append(seconds)
            if finished >= since:
                recent_tokens[model] += tokens
                recent_seconds[model] += seconds
        yield histogram(
            f"{PREFIX}_batch_duration_seconds",
            "Completed batches, from in progress to completed.",
            durations,
            DURATION_BUCKETS,
        )
        family = GaugeMetricFamily(
            f"{PREFIX}_model_throughput_tokens_per_second",
            "Output tokens per second of processing, over batches completed in the last METRICS_THROUGHPUT_MINUTES.",
            labels=["model"],
        )
        for model in sorted(recent_tokens):
            if recent_seconds[model] > 0:
                family.add_metric([model], recent_tokens[model] / recent_seconds[model])
        yield family

    def workers(self):
        now = timezone.now()
        age = GaugeMetricFamily(
            f"{PREFIX}_worker_heartbeat_age_seconds", "Seconds since the worker's last heartbeat.", labels=["worker"]
        )
        state = GaugeMetricFamily(
            f"{PREFIX}_worker_state", "1 for the worker's current state, 0 for the others.", labels=["worker", "state"]
        )
        online = GaugeMetricFamily(
            f"{PREFIX}_worker_online", "1 when the worker's heartbeat is fresh.", labels=["worker"]
        )
        memory = {
            "memory_used": GaugeMetricFamily(
                f"{PREFIX}_worker_memory_used_bytes",
                "Device memory in use (gpu), or the process RSS (host).",
                labels=["worker", "kind"],
            ),
            "memory_total": GaugeMetricFamily(
                f"{PREFIX}_worker_memory_total_bytes", "Device memory, or host memory.", labels=["worker", "kind"]
            ),
        }
        host = GaugeMetricFamily(
            f"{PREFIX}_worker_host_memory_used_bytes", "Host memory used by the worker process.", labels=["worker"]
        )
        load = GaugeMetricFamily(
            f"{PREFIX}_worker_model_load_seconds",
            "How long the worker's last model load took.",
            labels=["worker", "model"],
        )
        for worker in worker_list_recent(now=now, limit=None):
            age.add_metric([worker.name], max((now - worker.last_seen).total_seconds(), 0.0))
            for value in Worker.State.values:
                state.add_metric([worker.name, value], 1 if worker.state == value else 0)
            online.add_metric([worker.name], 1 if worker.freshness(now) == Worker.Freshness.ONLINE else 0)
            for field, family in memory.items():
                if getattr(worker, field) is not None:
                    family.add_metric([worker.name, worker.memory_kind or "unknown"], getattr(worker, field))
            if worker.host_memory_used is not None:
                host.add_metric([worker.name], worker.host_memory_used)
            if worker.last_load_seconds is not None:
                load.add_metric([worker.name, worker.last_load_model], worker.last_load_seconds)
        yield from (age, state, online, *memory.values(), host, load)

    def webhooks(self):
        counts = dict(WebhookDelivery.objects.values_list("status").annotate(n=Count("id")).order_by())
        family = GaugeMetricFamily(
            f"{PREFIX}_webhook_deliveries",
            "Completion webhook deliveries by status (dead: dead letters, after the last attempt).",
            labels=["status"],
        )
        for status in WebhookDelivery.Status.values:
            family.add_metric([status], counts.get(status, 0))
        yield family

    def labeling(self):
        counts = dict(WebhookEvent.objects.values_list("status").annotate(n=Count("id")).order_by())
        yield CounterMetricFamily(
            f"{PREFIX}_labelstudio_webhook_events_received",
            "Label Studio webhook events received (stored).",
            value=sum(counts.values()),
        )
        family = GaugeMetricFamily(
            f"{PREFIX}_labelstudio_webhook_events", "Label Studio webhook events by status.", labels=["status"]
        )
        for status in WebhookEvent.Status.values:
            family.add_metric([status], counts.get(status, 0))
        yield family

        served = PredictionLog.objects.aggregate(n=Count("id"), failed=Count("id", filter=~Q(error="")))
        yield CounterMetricFamily(
            f"{PREFIX}_labelstudio_predictions", "Predictions served to Label Studio.", value=served["n"]
        )
        yield CounterMetricFamily(
            f"{PREFIX}_labelstudio_predictions_failed",
            "Predictions served empty because generation failed.",
            value=served["failed"],
        )
        latencies = [ms / 1000 for ms in PredictionLog.objects.values_list("latency_ms", flat=True).iterator()]
        yield histogram(
            f"{PREFIX}_labelstudio_prediction_latency_seconds",
            "Time of the /predict call each prediction was part of.",
            {"": latencies},
            LATENCY_BUCKETS,
            label=None,
        )


registry = CollectorRegistry(auto_describe=False)
registry.register(DatabaseCollector())
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # The realtime latency of every gunicorn process, not only the one scraped.
    multiprocess.MultiProcessCollector(registry)
else:
    registry.register(latency.REQUEST_SECONDS)


def allowed(request):
    config = settings.VLLM_BATCH
    token = config["METRICS_TOKEN"]
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    return request.META.get("REMOTE_ADDR", "") in config["METRICS_ALLOWED_IPS"]


@never_cache
@require_GET
def metrics(request):
    if not allowed(request):
        return JsonResponse(
            error_envelope(
                "Metrics need `Authorization: Bearer <VLLM_BATCH_METRICS_TOKEN>` or an allowed address.",
                error_type="authentication_error",
                code="metrics_forbidden",
            ),
            status=403,
        )
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
