"""The realtime request latency histogram, observed by the web's realtime views.

gunicorn runs several web processes: with PROMETHEUS_MULTIPROC_DIR set (by
deploy/gunicorn.conf.py, before prometheus_client is imported) each process
writes its observations there and /metrics sums them (batchsite.metrics)."""

import logging

from prometheus_client import Histogram

logger = logging.getLogger(__name__)

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REQUEST_SECONDS = Histogram(
    "vllm_batch_realtime_request_seconds",
    "Realtime requests, from authentication until the answer (or its stream) was sent.",
    ["endpoint", "status"],
    buckets=BUCKETS,
)


def observe(endpoint, status, seconds):
    # A metric must never fail the request it measures.
    try:
        REQUEST_SECONDS.labels(endpoint, str(status)).observe(seconds)
    except Exception:
        logger.exception("could not record a realtime request's latency")
