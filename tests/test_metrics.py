"""GET /metrics: Prometheus text that parses, values equal to the rows, and refusal."""

from datetime import timedelta

import pytest
from django.test import Client, override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from batchsite.test_settings import VLLM_BATCH
from jobs.models import Batch, WebhookDelivery
from jobs.tests.factories import batch_row, make_user
from labeling.models import LabelingProject, PredictionLog, WebhookEvent
from workers.models import Worker
from workers.tests.factories import make_worker

pytestmark = pytest.mark.django_db


@pytest.fixture
def web():
    return Client()


def make_row(owner, status, model="m-a", total=0, done=0, failed=0, tin=0, tout=0, seconds=None, finished_ago=60):
    fields = {}
    if seconds is not None:
        finished = timezone.now() - timedelta(seconds=finished_ago)
        fields = {"in_progress_at": finished - timedelta(seconds=seconds), "completed_at": finished}
    return batch_row(
        owner,
        status,
        model=model,
        total=total,
        done=done,
        failed_requests=failed,
        input_tokens=tin,
        output_tokens=tout,
        **fields,
    )


def scrape(web, **headers):
    response = web.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test_values_match_the_rows(web):
    owner = make_user("ops")
    make_row(owner, "completed", total=10, done=9, failed=1, tin=100, tout=200, seconds=20)
    make_row(owner, "completed", model="m-b", total=4, done=4, tin=40, tout=30, seconds=90, finished_ago=7200)
    make_row(owner, "in_progress", total=8, done=3, failed=1, tin=7, tout=11)
    make_row(owner, "validating", total=5)
    make_row(owner, "failed", model="m-b")
    make_worker(
        hostname="gpu1", pid=7, age=3, state=Worker.State.PROCESSING, memory_kind="gpu",
        memory_used=5 * 2**30, memory_total=24 * 2**30, host_memory_used=2**30,
        last_load_model="m-a", last_load_seconds=42.5, last_load_at=timezone.now(),
    )  # fmt: skip
    make_worker(hostname="gpu2", pid=8)
    first, second = Batch.objects.filter(status="completed")
    WebhookDelivery.objects.create(batch_id=first.id, event_type="batch.completed", url="https://x", payload="{}")
    WebhookDelivery.objects.create(
        batch_id=second.id, event_type="batch.completed", url="https://x", payload="{}", status="dead"
    )
    project = LabelingProject.objects.create(ls_project="1.1", ls_project_id=1, label_config="<View/>")
    PredictionLog.objects.create(project=project, result=[], model_version="v", latency_ms=80)
    PredictionLog.objects.create(project=project, result=[], model_version="v", latency_ms=3000, error="boom")
    WebhookEvent.objects.create(body=b"{}", action="ANNOTATION_CREATED", status="processed")
    WebhookEvent.objects.create(body=b"{}", action="ANNOTATION_CREATED", status="failed")
    WebhookEvent.objects.create(body=b"{}", action="ANNOTATION_CREATED")

    s = scrape(web)

    assert value(s, "vllm_batch_batches", status="completed") == 2
    assert value(s, "vllm_batch_batches", status="in_progress") == 1
    assert value(s, "vllm_batch_batches", status="validating") == 1
    assert value(s, "vllm_batch_batches", status="failed") == 1
    assert value(s, "vllm_batch_batches", status="cancelled") == 0
    # (8 - 3 - 1) in progress + 5 validating
    assert value(s, "vllm_batch_queued_requests") == 9
    assert value(s, "vllm_batch_requests_completed_total", model="m-a") == 12
    assert value(s, "vllm_batch_requests_failed_total", model="m-a") == 2
    assert value(s, "vllm_batch_requests_completed_total", model="m-b") == 4
    assert value(s, "vllm_batch_input_tokens_total", model="m-a") == 107
    assert value(s, "vllm_batch_output_tokens_total", model="m-a") == 211
    assert value(s, "vllm_batch_output_tokens_total", model="m-b") == 30
    # Only m-a finished in the last hour: 200 tokens in 20 s.
    assert value(s, "vllm_batch_model_throughput_tokens_per_second", model="m-a") == pytest.approx(10.0)
    assert ("vllm_batch_model_throughput_tokens_per_second", (("model", "m-b"),)) not in s
    assert value(s, "vllm_batch_batch_duration_seconds_bucket", model="m-a", le="10.0") == 0
    assert value(s, "vllm_batch_batch_duration_seconds_bucket", model="m-a", le="30.0") == 1
    assert value(s, "vllm_batch_batch_duration_seconds_bucket", model="m-b", le="60.0") == 0
    assert value(s, "vllm_batch_batch_duration_seconds_bucket", model="m-b", le="120.0") == 1
    assert value(s, "vllm_batch_batch_duration_seconds_count", model="m-b") == 1
    assert value(s, "vllm_batch_batch_duration_seconds_sum", model="m-a") == pytest.approx(20.0)

    worker = "gpu1:7"
    assert 2.5 < value(s, "vllm_batch_worker_heartbeat_age_seconds", worker=worker) < 30
    assert value(s, "vllm_batch_worker_state", worker=worker, state="processing") == 1
    assert value(s, "vllm_batch_worker_state", worker=worker, state="idle") == 0
    assert value(s, "vllm_batch_worker_online", worker=worker) == 1
    assert value(s, "vllm_batch_worker_memory_used_bytes", worker=worker, kind="gpu") == 5 * 2**30
    assert value(s, "vllm_batch_worker_memory_total_bytes", worker=worker, kind="gpu") == 24 * 2**30
    assert value(s, "vllm_batch_worker_host_memory_used_bytes", worker=worker) == 2**30
    assert value(s, "vllm_batch_worker_model_load_seconds", worker=worker, model="m-a") == 42.5
    # A worker that loaded nothing yet has no load time.
    assert not [key for key in s if key[0] == "vllm_batch_worker_model_load_seconds" and "gpu2:8" in str(key)]

    assert value(s, "vllm_batch_webhook_deliveries", status="pending") == 1
    assert value(s, "vllm_batch_webhook_deliveries", status="dead") == 1
    assert value(s, "vllm_batch_webhook_deliveries", status="delivered") == 0
    assert value(s, "vllm_batch_labelstudio_webhook_events_received_total") == 3
    assert value(s, "vllm_batch_labelstudio_webhook_events", status="processed") == 1
    assert value(s, "vllm_batch_labelstudio_webhook_events", status="failed") == 1
    assert value(s, "vllm_batch_labelstudio_predictions_total") == 2
    assert value(s, "vllm_batch_labelstudio_predictions_failed_total") == 1
    assert value(s, "vllm_batch_labelstudio_prediction_latency_seconds_bucket", le="0.1") == 1
    assert value(s, "vllm_batch_labelstudio_prediction_latency_seconds_bucket", le="5.0") == 2
    assert value(s, "vllm_batch_labelstudio_prediction_latency_seconds_sum") == pytest.approx(3.08)


def test_counters_follow_the_rows_not_a_process(web):
    """A worker restart leaves the rows: the counters read the same, then grow."""
    owner = make_user("ops")
    batch = make_row(owner, "in_progress", total=10, done=4, tin=40, tout=80)
    before = value(scrape(web), "vllm_batch_output_tokens_total", model="m-a")
    Batch.objects.filter(pk=batch.pk).update(completed_requests=10, output_tokens=200)
    after = scrape(web)
    assert before == 80
    assert value(after, "vllm_batch_output_tokens_total", model="m-a") == 200
    assert value(after, "vllm_batch_requests_completed_total", model="m-a") == 10


def test_an_empty_database_scrapes(web):
    s = scrape(web)
    assert value(s, "vllm_batch_queued_requests") == 0
    assert value(s, "vllm_batch_labelstudio_prediction_latency_seconds_count") == 0


def test_refused_from_elsewhere_without_a_token(web):
    response = web.get("/metrics", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "metrics_forbidden"


def test_a_bearer_token_lets_in_from_anywhere(web):
    config = {**VLLM_BATCH, "METRICS_TOKEN": "s3cret", "METRICS_ALLOWED_IPS": frozenset()}
    with override_settings(VLLM_BATCH=config):
        assert web.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
        wrong = web.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer nope")
        assert wrong.status_code == 403
        scrape(web, REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer s3cret")


def test_an_allowed_address_gets_in(web):
    config = {**VLLM_BATCH, "METRICS_ALLOWED_IPS": frozenset({"10.1.2.3"})}
    with override_settings(VLLM_BATCH=config):
        scrape(web, REMOTE_ADDR="10.1.2.3")
        assert web.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
