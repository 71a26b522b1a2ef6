"""Completion webhooks: when a batch ends (completed, failed, expired, cancelled)
its owner hears about it with a POST of `{"type": "batch.completed", "data": <the
batch object>}`.

Where to: the batch's `webhook_url` metadata, else the URL of its owner's API
key's webhook (WebhookEndpoint). Signed in the Standard Webhooks format
(https://www.standardwebhooks.com): headers webhook-id (the same on every retry),
webhook-timestamp and webhook-signature = "v1," + base64 HMAC-SHA256, keyed with
the key's secret, over "{id}.{timestamp}.{body}". Sent by a django-q task;
a failure (a network error, a status outside 2xx) is retried after
WEBHOOK_RETRY_SECONDS doubling, and after WEBHOOK_MAX_ATTEMPTS the delivery is
`dead` (a dead letter the admin can send again). Only http(s) URLs whose every
address is public are used: loopback, private, link-local (the cloud metadata
address among them) and reserved addresses are refused unless
VLLM_BATCH_WEBHOOK_ALLOW_PRIVATE is set. The check at creation is not enough: a
name may resolve to a public address then and to 127.0.0.1 at send time (DNS
rebinding). So each send resolves the host once, checks those addresses and
connects to exactly the first of them, with the Host header and TLS server name
(SNI, certificate check) of the URL's own host.
"""

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_q.models import Schedule
from django_q.tasks import async_task

from .models import ApiKey, Batch, WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

DELIVER_TASK = "jobs.webhooks.deliver_task"
EVENTS = {
    Batch.Status.COMPLETED: "batch.completed",
    Batch.Status.FAILED: "batch.failed",
    Batch.Status.EXPIRED: "batch.expired",
    Batch.Status.CANCELLED: "batch.cancelled",
}
METADATA_URL = "webhook_url"


class UnsafeUrl(ValueError):
    pass


def config():
    return settings.VLLM_BATCH


# -- signing ---------------------------------------------------------------------


def sign(secret, message_id, timestamp, body):
    """The webhook-signature header's value for `body` (str)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret, message_id, body, timestamp=None):
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


# -- where to --------------------------------------------------------------------


def _parts(url):
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeUrl(f"A webhook URL must be http or https with a host: {url!r}.")
    return parts


def _addresses(parts):
    """Every address the URL's host resolves to now."""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise UnsafeUrl(f"The webhook host {parts.hostname!r} does not resolve: {exc}.") from None
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


def _refuse_private(hostname, addresses):
    for address in addresses:
        if not address.is_global:
            raise UnsafeUrl(
                f"The webhook host {hostname!r} is at {address}, a loopback, private, link-local or reserved "
                "address: refused."
            )


def check_url(url):
    """Raises UnsafeUrl unless `url` is http(s) to a host whose every address is public."""
    parts = _parts(url)
    if config()["WEBHOOK_ALLOW_PRIVATE"]:
        return
    _refuse_private(parts.hostname, _addresses(parts))


def send_target(url):
    """Where one send to `url` goes: (URL to connect to, extra headers, httpx request extensions).

    Resolves the host once and, unless private addresses are allowed, refuses the
    send when any address is not public (UnsafeUrl); the URL returned names the
    first address itself, so nothing resolves the name again between the check
    and the connection. The Host header and the TLS server name stay the host's."""
    parts = _parts(url)
    try:
        original = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeUrl(f"Not a valid webhook URL: {exc}.") from None
    if config()["WEBHOOK_ALLOW_PRIVATE"]:
        return original, {}, {}
    addresses = _addresses(parts)
    _refuse_private(parts.hostname, addresses)
    if str(addresses[0]) == parts.hostname:  # an address in the URL itself
        return original, {}, {}
    return (
        original.copy_with(host=str(addresses[0])),
        {"host": original.netloc.decode("ascii")},
        {"sni_hostname": original.raw_host.decode("ascii")},
    )


def endpoint_for(batch):
    """The owner's webhook endpoint: that of the newest unrevoked key that has one."""
    return (
        WebhookEndpoint.objects.filter(api_key__owner_id=batch.owner_id, api_key__revoked_at__isnull=True)
        .order_by("-api_key__created_at")
        .first()
    )


def endpoint_create(*, api_key, url=""):
    """Gives `api_key` a webhook (a new secret each time); returns it: its secret is shown once."""
    if url:
        check_url(url)
    WebhookEndpoint.objects.filter(api_key=api_key).delete()
    return WebhookEndpoint.objects.create(api_key=api_key, url=url)


# -- sending ---------------------------------------------------------------------


def batch_ended(batch_id):
    """Queues the batch's end event, if it has a webhook; called when a batch reaches a final status."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None or batch.status not in EVENTS:
        return None
    endpoint = endpoint_for(batch)
    url = (batch.metadata or {}).get(METADATA_URL) or (endpoint.url if endpoint else "")
    if not url:
        return None
    if endpoint is None:
        logger.warning("batch %s names a webhook_url but its owner's keys have no webhook secret", batch_id)
        return None
    payload = json.dumps({"type": EVENTS[batch.status], "timestamp": int(time.time()), "data": batch.to_openai()})
    try:
        with transaction.atomic():
            delivery = WebhookDelivery.objects.create(
                batch_id=batch_id, endpoint=endpoint, event_type=EVENTS[batch.status], url=url, payload=payload
            )
    except IntegrityError:
        return None  # already sent for this batch and event
    transaction.on_commit(lambda: enqueue(delivery.pk))
    return delivery


def enqueue(delivery_id, when=None):
    if when is None:
        return async_task(DELIVER_TASK, delivery_id, task_name=f"webhook {delivery_id}", group="webhooks")
    return Schedule.objects.create(
        name=f"webhook {delivery_id} at {when.isoformat()}",
        func=DELIVER_TASK,
        args=repr(delivery_id),
        schedule_type=Schedule.ONCE,
        repeats=1,
        next_run=when,
    )


def _post(delivery):
    """Sends once; returns None on a 2xx answer, else what went wrong."""
    if delivery.endpoint is None:
        return "the API key's webhook was deleted"
    try:
        target, host_header, extensions = send_target(delivery.url)
    except UnsafeUrl as exc:
        return str(exc)
    try:
        with httpx.Client(timeout=config()["WEBHOOK_TIMEOUT"], follow_redirects=False) as client:
            response = client.post(
                target,
                content=delivery.payload.encode(),
                headers={**headers(delivery.endpoint.secret, delivery.pk, delivery.payload), **host_header},
                extensions=extensions,
            )
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    WebhookDelivery.objects.filter(pk=delivery.pk).update(last_status_code=response.status_code)
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


def deliver(delivery_id):
    """One attempt; schedules the next with backoff, or marks the delivery dead
    after the last. Returns the delivery's status."""
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return delivery.status if delivery else "gone"
    problem = _post(delivery)
    now = timezone.now()
    attempts = delivery.attempts + 1
    if problem is None:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.DELIVERED, attempts=attempts, delivered_at=now, last_error="", updated_at=now
        )
        return WebhookDelivery.Status.DELIVERED
    if attempts >= config()["WEBHOOK_MAX_ATTEMPTS"]:
        logger.error(
            "webhook %s for batch %s is dead after %d attempts: %s", delivery.pk, delivery.batch_id, attempts, problem
        )
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.DEAD,
            attempts=attempts,
            last_error=problem,
            next_attempt_at=None,
            updated_at=now,
        )
        return WebhookDelivery.Status.DEAD
    retry_at = now + timedelta(seconds=config()["WEBHOOK_RETRY_SECONDS"] * 2 ** (attempts - 1))
    logger.warning("webhook %s attempt %d failed (%s); next at %s", delivery.pk, attempts, problem, retry_at)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        attempts=attempts, last_error=problem, next_attempt_at=retry_at, updated_at=now
    )
    enqueue(delivery.pk, when=retry_at)
    return WebhookDelivery.Status.PENDING


def deliver_task(delivery_id):
    return str(deliver(delivery_id))


def resend(delivery):
    """Sends a dead letter again: the stored payload, the same webhook-id, a fresh set of attempts."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=WebhookDelivery.Status.PENDING, attempts=0, next_attempt_at=None, updated_at=timezone.now()
    )
    transaction.on_commit(lambda: enqueue(delivery.pk))


def key_for_name(name):
    return ApiKey.objects.filter(name=name, revoked_at__isnull=True).order_by("-created_at").first()
