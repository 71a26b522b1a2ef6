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
VLLM_BATCH_WEBHOOK_ALLOW_PRIVATE is set.
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


def check_url(url):
    """Raises UnsafeUrl unless `url` is http(s) to a host whose every address is public."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeUrl(f"A webhook URL must be http or https with a host: {url!r}.")
    if config()["WEBHOOK_ALLOW_PRIVATE"]:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"The webhook host {parts.hostname!r} does not resolve: {exc}.") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not address.is_global:
            raise UnsafeUrl(
                f"The webhook host {parts.hostname!r} is at {address}, a loopback, private, link-local or reserved "
                "address: refused."
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
        check_url(delivery.url)
    except UnsafeUrl as exc:
        return str(exc)
    try:
        response = httpx.post(
            delivery.url,
            content=delivery.payload.encode(),
            headers=headers(delivery.endpoint.secret, delivery.pk, delivery.payload),
            timeout=config()["WEBHOOK_TIMEOUT"],
            follow_redirects=False,
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
