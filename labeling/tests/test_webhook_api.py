"""POST /v1/webhooks/label-studio and the backend's /labelstudio/webhook: the
secret header, limits, one stored row per delivery, processing queued on commit."""

import json
import time

import pytest

from labeling import events
from labeling.models import Annotation, WebhookEvent

from .deliveries import EVENTS, body, raw

pytestmark = pytest.mark.django_db

URL = "/v1/webhooks/label-studio"


@pytest.fixture(autouse=True)
def secrets(settings):
    settings.LABEL_STUDIO_WEBHOOK_SECRETS = ["old-secret", "new-secret"]
    settings.LABEL_STUDIO_WEBHOOK_HEADER = "X-Webhook-Secret"


@pytest.fixture
def queued(monkeypatch):
    """Event ids handed to django-q, processed at once as the cluster would."""
    ids = []

    def enqueue(event_id):
        ids.append(event_id)
        events.event_process(event_id=event_id)

    monkeypatch.setattr(events, "_enqueue", enqueue)
    return ids


def post(client, data, secret="new-secret", **headers):
    if secret is not None:
        headers["HTTP_X_WEBHOOK_SECRET"] = secret
    data = data if isinstance(data, bytes | str) else raw(data)
    return client.post(URL, data=data, content_type="application/json", **headers)


@pytest.mark.parametrize("name", EVENTS)
def test_each_recorded_delivery_is_stored_and_answered_at_once(
    client, name, queued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, body(name))
    assert response.status_code == 200
    event = WebhookEvent.objects.get()
    assert response.json() == {"status": "received", "event_id": event.pk}
    assert event.source == WebhookEvent.Source.WEBHOOK and json.loads(bytes(event.body)) == body(name)
    assert queued == [event.pk]
    assert event.action == name.removeprefix("webhook_").removesuffix(".json")


def test_processing_is_queued_only_after_the_commit(client, queued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        post(client, body("webhook_TASKS_CREATED.json"))
    assert queued == [] and len(callbacks) == 1


def test_both_secrets_work_during_a_rotation(client, queued):
    assert post(client, body("webhook_TASKS_CREATED.json"), secret="old-secret").status_code == 200
    assert post(client, body("webhook_TASKS_CREATED.json"), secret="new-secret").status_code == 200
    assert WebhookEvent.objects.count() == 2


@pytest.mark.parametrize("secret", [None, "", "wrong", "new-secret ", "new-secretX", "old"])
def test_a_missing_or_wrong_secret_is_401_and_nothing_is_stored(client, queued, secret):
    response = post(client, body("webhook_ANNOTATION_CREATED.json"), secret=secret)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_webhook_secret"
    assert "X-Webhook-Secret" in response.json()["error"]["message"]
    assert WebhookEvent.objects.count() == 0 and queued == []


def test_an_api_key_does_not_replace_the_secret(client, queued):
    response = post(client, body("webhook_TASKS_CREATED.json"), secret=None, HTTP_AUTHORIZATION="Bearer vb-x")
    assert response.status_code == 401 and WebhookEvent.objects.count() == 0


def test_without_configured_secrets_every_delivery_is_refused(client, settings, queued):
    settings.LABEL_STUDIO_WEBHOOK_SECRETS = []
    response = post(client, body("webhook_TASKS_CREATED.json"), secret="")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "webhook_not_configured"
    assert WebhookEvent.objects.count() == 0


def test_the_header_name_is_a_setting(client, settings, queued):
    settings.LABEL_STUDIO_WEBHOOK_HEADER = "X-LS-Token"
    assert post(client, body("webhook_TASKS_CREATED.json")).status_code == 401
    response = post(client, body("webhook_TASKS_CREATED.json"), secret=None, HTTP_X_LS_TOKEN="old-secret")
    assert response.status_code == 200


def test_a_body_over_the_limit_is_413(client, settings, queued):
    settings.LABEL_STUDIO_WEBHOOK_MAX_BYTES = 1000
    payload = body("webhook_TASKS_CREATED.json")
    assert len(raw(payload)) > 1000
    response = post(client, payload)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert WebhookEvent.objects.count() == 0


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("{not json", "invalid_json"),
        (b"\xff\xfe\x00", "invalid_json"),
        ("", "invalid_json"),
        ("[1, 2]", "invalid_type"),
        ('"ANNOTATION_CREATED"', "invalid_type"),
        ('{"project": {"id": 1}}', "missing_required_parameter"),
        ('{"action": 5}', "missing_required_parameter"),
    ],
)
def test_bad_bodies_are_400_and_nothing_is_stored(client, queued, data, code):
    response = post(client, data)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert WebhookEvent.objects.count() == 0


def test_an_unknown_action_is_stored_and_ignored(client, queued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, {"action": "REVIEW_CREATED", "project": {"id": 1}})
    assert response.status_code == 200
    event = WebhookEvent.objects.get()
    assert event.action == "REVIEW_CREATED" and event.status == WebhookEvent.Status.IGNORED


def test_only_post_is_allowed(client):
    assert client.get(URL, HTTP_X_WEBHOOK_SECRET="new-secret").status_code == 405


def test_receiving_is_one_insert_and_fast(client, queued, django_assert_max_num_queries):
    payload = raw(body("webhook_ANNOTATION_CREATED.json"))
    with django_assert_max_num_queries(1):
        post(client, payload)
    times = []
    for _ in range(50):
        started = time.perf_counter()
        assert post(client, payload).status_code == 200
        times.append(time.perf_counter() - started)
    assert sorted(times)[48] < 0.1  # p98 of 50


class TestBackendWebhook:
    """Label Studio's auto-registered <backend>/webhook: basic auth (when set), not the secret."""

    def test_its_events_are_stored_with_source_backend(self, client, queued, django_capture_on_commit_callbacks):
        data = raw(body("ml_webhook_ANNOTATION_CREATED.json"))
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post("/labelstudio/webhook", data=data, content_type="application/json")
        assert response.status_code == 200 and response.json()["status"] == "ok"
        event = WebhookEvent.objects.get()
        assert event.source == WebhookEvent.Source.BACKEND and event.status == WebhookEvent.Status.PROCESSED
        assert Annotation.objects.get().ls_annotation_id == 1

    def test_a_bad_body_is_400_and_nothing_is_stored(self, client):
        response = client.post("/labelstudio/webhook", data="[]", content_type="application/json")
        assert response.status_code == 400 and WebhookEvent.objects.count() == 0

    def test_basic_auth_protects_it(self, client, settings, queued):
        settings.LABEL_STUDIO_BACKEND_USERNAME, settings.LABEL_STUDIO_BACKEND_PASSWORD = "ls", "pw"
        data = raw(body("ml_webhook_ANNOTATION_CREATED.json"))
        response = client.post("/labelstudio/webhook", data=data, content_type="application/json")
        assert response.status_code == 401 and WebhookEvent.objects.count() == 0


def test_a_broker_failure_still_answers_200_and_keeps_the_event(
    client, monkeypatch, django_capture_on_commit_callbacks
):
    def broken(*args, **kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr("django_q.tasks.async_task", broken)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, body("webhook_TASKS_CREATED.json"))
    assert response.status_code == 200
    assert WebhookEvent.objects.get().status == WebhookEvent.Status.RECEIVED


@pytest.mark.django_db(transaction=True)
def test_the_web_process_applies_the_event_itself_and_queues_no_task(client, settings, monkeypatch):
    """The cluster's worker may be busy with a batch slice: the web process applies
    the stored event right after answering, on its own thread, and the request
    writes the event row only (no django-q task row beside it)."""
    settings.LABEL_STUDIO_WEBHOOK_SECRETS = ["new-secret"]
    settings.LABEL_STUDIO_EVENTS_INLINE = True
    queued = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda *args, **kwargs: queued.append(args))
    submitted = []
    submit = events._inline.submit
    monkeypatch.setattr(events._inline, "submit", submitted.append)
    ids = [post(client, body(name)).json()["event_id"] for name in EVENTS]
    assert submitted == ids
    for event_id in ids:  # handed over together (an in-memory test database takes one writer at a time)
        submit(event_id)
    events._inline.wait(timeout=30)
    assert queued == []
    assert [WebhookEvent.objects.get(pk=pk).status for pk in ids] == [WebhookEvent.Status.PROCESSED] * len(EVENTS)
    # Processing again (the sweep, the admin) changes nothing.
    assert events.event_process(event_id=ids[0]) == WebhookEvent.Status.PROCESSED
    assert WebhookEvent.objects.get(pk=ids[0]).attempts == 1


@pytest.mark.django_db(transaction=True)
def test_the_request_path_writes_one_row(client, settings, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.LABEL_STUDIO_WEBHOOK_SECRETS = ["new-secret"]
    settings.LABEL_STUDIO_EVENTS_INLINE = True
    monkeypatch.setattr(events._inline, "submit", lambda event_id: None)
    with CaptureQueriesContext(connection) as queries:
        assert post(client, body("webhook_ANNOTATION_UPDATED.json")).status_code == 200
    writes = [q["sql"] for q in queries.captured_queries if not q["sql"].lstrip().upper().startswith("SELECT")]
    assert len(writes) == 1 and writes[0].startswith('INSERT INTO "labeling_webhookevent"')
