"""Completion webhooks against a real HTTP receiver on loopback (allowed by the
setting here): Standard Webhooks signatures, retries with backoff and exactly one
success, dead letters re-sent, unsafe URLs refused."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import Permission
from django_q.models import Schedule
from standardwebhooks.webhooks import Webhook

from jobs import services, webhooks
from jobs.models import Batch, WebhookDelivery
from jobs.tests.factories import chat_request, make_batch


class Receiver:
    """Answers with the next status of `statuses` (the last one repeats) and records each request."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.requests = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                receiver.requests.append({"headers": dict(self.headers), "body": body, "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    @property
    def successes(self):
        return [r for r in self.requests if 200 <= r["status"] < 300]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def allow_loopback(settings):
    settings.VLLM_BATCH = {
        **settings.VLLM_BATCH,
        "WEBHOOK_ALLOW_PRIVATE": True,
        "WEBHOOK_MAX_ATTEMPTS": 3,
        "WEBHOOK_RETRY_SECONDS": 30.0,
    }


@pytest.fixture
def receiver():
    made = []

    def make(*statuses):
        made.append(Receiver(statuses or [200]))
        return made[-1]

    yield make
    for r in made:
        r.close()


def ended_batch(user, url, status=Batch.Status.COMPLETED):
    api_key, _raw = services.api_key_create(owner=user, name="hooks")
    endpoint = webhooks.endpoint_create(api_key=api_key, url=url)
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(status=status)
    return endpoint, webhooks.batch_ended(batch.pk)


def test_the_signature_verifies_with_the_standard_webhooks_reference(user, allow_loopback, receiver):
    hook = receiver(200)
    endpoint, delivery = ended_batch(user, hook.url)

    assert webhooks.deliver(delivery.pk) == "delivered"

    [request] = hook.requests
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["webhook-id"] == delivery.pk
    event = Webhook(endpoint.secret).verify(request["body"], headers)
    assert event["type"] == "batch.completed"
    assert event["data"]["id"] == delivery.batch_id and event["data"]["object"] == "batch"
    # Over the raw body: one changed byte fails.
    with pytest.raises(Exception, match="(?i)signature"):
        Webhook(endpoint.secret).verify(request["body"].replace(b"completed", b"Completed", 1), headers)
    assert endpoint.secret.startswith("whsec_")


def test_a_receiver_failing_twice_then_succeeding_gets_exactly_one_success(user, allow_loopback, receiver):
    hook = receiver(500, 503, 200)
    _endpoint, delivery = ended_batch(user, hook.url)

    outcomes = [webhooks.deliver(delivery.pk) for _ in range(4)]

    assert outcomes == ["pending", "pending", "delivered", "delivered"]
    assert len(hook.requests) == 3 and len(hook.successes) == 1
    assert len({r["headers"]["webhook-id"] for r in hook.requests}) == 1
    assert len({r["body"] for r in hook.requests}) == 1
    retries = list(Schedule.objects.filter(func=webhooks.DELIVER_TASK).order_by("next_run"))
    assert len(retries) == 2
    # Exponential backoff: the second wait is twice the first.
    created = WebhookDelivery.objects.get(pk=delivery.pk).created_at
    first, second = ((s.next_run - created).total_seconds() for s in retries)
    assert 29 <= first <= 35 and 59 <= second <= 65
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 3, 200)


def test_a_dead_letter_re_sends_its_stored_payload(user, allow_loopback, receiver, admin_client):
    hook = receiver(500, 500, 500, 200)
    _endpoint, delivery = ended_batch(user, hook.url)
    for _ in range(3):
        webhooks.deliver(delivery.pk)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_error) == ("dead", "HTTP 500")

    response = admin_client.post(
        "/admin/jobs/webhookdelivery/", {"action": "resend", "_selected_action": [delivery.pk]}, follow=True
    )
    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    assert webhooks.deliver(delivery.pk) == "delivered"
    assert hook.requests[-1]["body"] == delivery.payload.encode() == hook.requests[0]["body"]
    assert hook.requests[-1]["headers"]["webhook-id"] == delivery.pk


def test_re_send_needs_the_change_permission(user, allow_loopback, receiver, client, django_user_model):
    _endpoint, delivery = ended_batch(user, receiver(500).url)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="dead")
    viewer = django_user_model.objects.create_user(username="viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_webhookdelivery"))
    client.force_login(viewer)

    client.post("/admin/jobs/webhookdelivery/", {"action": "resend", "_selected_action": [delivery.pk]})

    delivery.refresh_from_db()
    assert delivery.status == "dead"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.5/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://0.0.0.0/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
    ],
)
def test_unsafe_urls_are_refused(url, db):
    with pytest.raises(webhooks.UnsafeUrl):
        webhooks.check_url(url)


def test_a_private_address_is_refused_at_send_time_and_nothing_is_sent(user, receiver, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "WEBHOOK_MAX_ATTEMPTS": 1}
    hook = receiver(200)
    api_key, _raw = services.api_key_create(owner=user, name="hooks")
    webhooks.endpoint_create(api_key=api_key)
    batch = make_batch(user, [chat_request("a")], metadata={"webhook_url": hook.url})
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.FAILED)
    delivery = webhooks.batch_ended(batch.pk)

    assert webhooks.deliver(delivery.pk) == "dead"
    assert hook.requests == []
    delivery.refresh_from_db()
    assert "127.0.0.1" in delivery.last_error and "refused" in delivery.last_error
    assert json.loads(delivery.payload)["type"] == "batch.failed"


def test_finalize_queues_one_event_per_batch(user, allow_loopback, receiver):
    hook = receiver(200)
    api_key, _raw = services.api_key_create(owner=user, name="hooks")
    webhooks.endpoint_create(api_key=api_key, url=hook.url)
    batch = make_batch(user, [chat_request("a")])

    services.batch_finalize(batch_id=batch.pk, final_status=Batch.Status.CANCELLED)
    webhooks.batch_ended(batch.pk)  # a second end of the same batch sends nothing more

    [delivery] = WebhookDelivery.objects.all()
    assert (delivery.batch_id, delivery.event_type, delivery.url) == (batch.pk, "batch.cancelled", hook.url)


def test_a_batch_without_a_webhook_sends_nothing(user):
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.COMPLETED)
    assert webhooks.batch_ended(batch.pk) is None


def test_the_admin_shows_a_new_webhook_secret_once_on_the_page_and_refuses_unsafe_urls(user, admin_client):
    api_key, _raw = services.api_key_create(owner=user, name="hooks")

    refused = admin_client.post("/admin/jobs/webhookendpoint/add/", {"api_key": api_key.pk, "url": "http://10.0.0.5/x"})
    assert refused.status_code == 200 and "refused" in refused.content.decode()

    page = admin_client.post("/admin/jobs/webhookendpoint/add/", {"api_key": api_key.pk, "url": ""})
    endpoint = api_key.webhook
    assert endpoint.secret in page.content.decode()
    assert "no-store" in page["Cache-Control"]
    assert (
        endpoint.secret not in admin_client.get(f"/admin/jobs/webhookendpoint/{endpoint.pk}/change/").content.decode()
    )


class FakeResolver:
    """socket.getaddrinfo for `name`: the answers in turn (the last one repeats); addresses resolve to themselves."""

    def __init__(self, name, *answers):
        self.name = name
        self.answers = list(answers)
        self.calls = 0
        self.real = socket.getaddrinfo

    def __call__(self, host, port, *args, **kwargs):
        if host != self.name:
            return self.real(host, port, *args, **kwargs)
        self.calls += 1
        address = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]


def rebinding_delivery(user, monkeypatch, resolver, url):
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    api_key, _raw = services.api_key_create(owner=user, name="hooks")
    webhooks.endpoint_create(api_key=api_key, url=url)  # checked here: a public address
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.COMPLETED)
    return webhooks.batch_ended(batch.pk)


def test_a_name_rebound_to_loopback_at_send_time_is_refused(user, receiver, settings, monkeypatch):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "WEBHOOK_MAX_ATTEMPTS": 1}
    hook = receiver(200)
    port = hook.server.server_port
    resolver = FakeResolver("hooks.example.com", "93.184.216.34", "127.0.0.1")
    delivery = rebinding_delivery(user, monkeypatch, resolver, f"http://hooks.example.com:{port}/hook")

    assert webhooks.deliver(delivery.pk) == "dead"

    assert hook.requests == []
    delivery.refresh_from_db()
    assert "127.0.0.1" in delivery.last_error and "refused" in delivery.last_error


def test_a_send_connects_to_the_address_it_checked_keeping_the_host_header(user, receiver, monkeypatch):
    """The name is resolved once per send: a second lookup (say, by the HTTP client)
    would rebind to loopback; the connection goes to the checked address instead."""
    hook = receiver(200)
    port = hook.server.server_port
    resolver = FakeResolver("hooks.example.com", "93.184.216.34", "93.184.216.34", "127.0.0.1")
    delivery = rebinding_delivery(user, monkeypatch, resolver, f"http://hooks.example.com:{port}/hook")
    connected = []
    real_connect = socket.create_connection

    def create_connection(address, *args, **kwargs):
        connected.append(address)
        # The checked public address stands for the receiver on loopback here.
        return real_connect(("127.0.0.1", address[1]) if address[0] == "93.184.216.34" else address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)

    assert webhooks.deliver(delivery.pk) == "delivered"

    assert connected == [("93.184.216.34", port)]
    assert resolver.calls == 2  # once at creation, once at the send
    [request] = hook.requests
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["host"] == f"hooks.example.com:{port}"


def test_an_https_send_keeps_the_hosts_tls_name(db, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", FakeResolver("hooks.example.com", "93.184.216.34"))

    url, extra_headers, extensions = webhooks.send_target("https://hooks.example.com/hook?x=1")

    assert str(url) == "https://93.184.216.34/hook?x=1"
    assert extra_headers == {"host": "hooks.example.com"}
    assert extensions == {"sni_hostname": "hooks.example.com"}
