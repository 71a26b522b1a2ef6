"""Recorded Label Studio webhook deliveries (labeling/tests/fixtures, Label Studio
1.23.2) for the loop's tests: their bodies, changed where a test needs it, stored
and processed through labeling.events."""

import copy
import json
from pathlib import Path

from labeling import events
from labeling.models import WebhookEvent

FIXTURES = Path(__file__).parent / "fixtures"
PROJECT_KEY = "1.1795811871"  # the recorded project: id 1, created 2026-11-27T20:37:51Z
EVENTS = [
    "webhook_TASKS_CREATED.json",
    "webhook_ANNOTATION_CREATED.json",
    "webhook_ANNOTATION_UPDATED.json",
    "webhook_ANNOTATIONS_CREATED.json",
    "webhook_PROJECT_UPDATED.json",
    "webhook_ANNOTATIONS_DELETED.json",
    "webhook_TASKS_DELETED.json",
]


def body(name):
    """A fresh copy of a recorded delivery's JSON body."""
    return copy.deepcopy(json.loads((FIXTURES / name).read_text())["request"]["body"])


def raw(payload):
    return json.dumps(payload).encode()


def deliver(payload, source=WebhookEvent.Source.WEBHOOK):
    """Stores and processes one delivery (a body dict or a fixture name); returns the event."""
    if isinstance(payload, str):
        payload = body(payload)
    event = events.event_receive(body=raw(payload), source=source)
    events.event_process(event_id=event.pk)
    event.refresh_from_db()
    return event


def annotation_event(annotation_id, task_id, choice, updated_at, *, action="ANNOTATION_UPDATED", **fields):
    """The recorded ANNOTATION_UPDATED body for another annotation, task, choice and time."""
    payload = body("webhook_ANNOTATION_UPDATED.json")
    payload["action"] = action
    annotation = payload["annotation"]
    annotation.update(id=annotation_id, task=task_id, updated_at=updated_at, **fields)
    annotation["result"] = [
        {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}
    ]
    payload["task"] = next(t for t in body("webhook_TASKS_CREATED.json")["tasks"] if t["id"] == task_id)
    return payload
