"""Label Studio's webhook events: received (one row, at once) and processed
(right after, on the web process's own thread) into the annotation store; a
django-q schedule sweeps up what is left `received`.

Label Studio waits 1 s for a webhook and never retries, so receiving only checks
the body is a JSON object with an `action` and stores it as it came. Processing
is idempotent (see labeling.store): a delivery processed twice, or one that
arrives after a newer one, changes nothing.
"""

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone

from batchsite.errors import ApiError, TooLarge
from batchsite.sqlite_turns import write_turn

from . import services, store, training
from .label_config import LabelConfigError, parse_label_config
from .models import LabelingProject, TrainingRun, WebhookEvent

logger = logging.getLogger(__name__)

PROCESS_TASK = "labeling.tasks.process_event"
MAX_ERROR = 4000

ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"}


# The cluster's one worker may be running a batch slice for minutes: the web
# process applies each event itself right after answering, on one thread (in
# order, one writer). The request stores one row and nothing else (no task row
# beside it: on SQLite every INSERT waits for the one write lock); what this thread
# never gets to (the process died first) the sweep schedule picks up. Processing
# twice changes nothing.
class _InlineProcessor:
    def __init__(self):
        self._lock = threading.Lock()
        self._pending = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labelstudio-events")

    def submit(self, event_id):
        with self._lock:
            self._pending.append(event_id)
            if len(self._pending) > 1:
                return  # the drain already queued takes it
        self._executor.submit(self._drain)

    def _drain(self):
        # Everything that arrived meanwhile, on one connection; each event in its own short transaction.
        with self._lock:
            ids, self._pending = self._pending, []
        try:
            for event_id in ids:
                try:
                    # One event per turn: a request waits for one event at most.
                    with write_turn(exclusive=True):
                        event_process(event_id=event_id)
                except Exception:
                    logger.exception("Label Studio event %s: processing in the web process failed", event_id)
        finally:
            connections.close_all()

    def wait(self, timeout):
        """Returns once everything submitted before has been processed (tests, benchmarks)."""
        self._executor.submit(lambda: None).result(timeout=timeout)


_inline = _InlineProcessor()


def _enqueue(event_id):
    if settings.LABEL_STUDIO_EVENTS_INLINE:
        _inline.submit(event_id)
        return
    from django_q.tasks import async_task

    try:
        async_task(PROCESS_TASK, event_id, task_name=f"labelstudio event {event_id}", group="labelstudio-events")
    except Exception:
        # The event is stored: answer 200 anyway; the sweep processes it later.
        logger.exception("Label Studio event %s stored but not queued (the task broker failed)", event_id)


def _project_id(body):
    project = body.get("project")
    value = project.get("id") if isinstance(project, dict) else project
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def event_receive(*, body, source):
    """Stores one delivery (bytes) and hands it to processing after the commit
    (the web process's own thread, or a django-q task when LABEL_STUDIO_EVENTS_INLINE
    is off); returns the event.
    ApiError 413 over LABEL_STUDIO_WEBHOOK_MAX_BYTES, 400 when the body is not a
    JSON object with a string `action`. Nothing is stored then."""
    limit = settings.LABEL_STUDIO_WEBHOOK_MAX_BYTES
    if len(body) > limit:
        raise TooLarge(f"The event body is larger than {limit} bytes.", code="request_too_large")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise ApiError("The request body must be a JSON object.", code="invalid_type")
    action = payload.get("action")
    if not isinstance(action, str) or not action.strip():
        raise ApiError("The event has no 'action'.", param="action", code="missing_required_parameter")
    with write_turn(exclusive=False):
        event = WebhookEvent.objects.create(
            body=bytes(body), action=action[:100], ls_project_id=_project_id(payload), source=source
        )
    transaction.on_commit(lambda: _enqueue(event.pk))
    return event


# Processing ------------------------------------------------------------------


def _project_key(record):
    created = store.ls_time(record.get("created_at"))
    if created is None:
        raise store.PayloadError(f"project {record.get('id')} has no created_at")
    return f"{record['id']}.{int(created.timestamp())}"


def _project(payload, *, create=True):
    """The LabelingProject the event is about; created from the event's full
    `project` record when the backend has not met it yet."""
    record = payload.get("project")
    project_id = _project_id(payload)
    if project_id is None:
        raise store.PayloadError("the event names no project")
    if isinstance(record, dict) and record.get("created_at"):
        key = _project_key(record)
        project = LabelingProject.objects.filter(ls_project=key).first()
        if project is None and create:
            if not isinstance(record.get("label_config"), str):
                raise store.PayloadError(f"project {project_id} is new and the event has no label_config")
            project = services.project_sync(project_key=key, label_config=record["label_config"])
        if project is not None:
            return store.project_locked(project.pk)
    from .selectors import project_for_ls_id

    project = project_for_ls_id(project_id)
    if project is None:
        raise store.PayloadError(f"Label Studio project {project_id} is unknown and the event does not describe it")
    return store.project_locked(project.pk)


def _records(payload, key):
    value = payload.get(key)
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise store.PayloadError(f"'{key}' is not a list of objects")
    return value


def _apply_annotations(project, payload):
    tasks = {}
    for record in _records(payload, "task") if payload.get("task") is not None else []:
        task = store.task_upsert(project=project, record=record)
        tasks[task.ls_task_id] = task
    config = store.config_of(project)
    applied = 0
    for record in _records(payload, "annotation"):
        task_id = record.get("task")
        task = tasks.get(task_id)
        if task is None:
            task = project.tasks.filter(ls_task_id=task_id).first()
        if task is None:
            raise store.PayloadError(f"annotation {record.get('id')} belongs to task {task_id}, which is unknown")
        applied += store.annotation_upsert(project=project, record=record, task=task, config=config)[1]
    return f"{applied} annotation(s) applied"


def project_refresh(project, record, *, strict=True):
    """Applies a Label Studio project record (title, label config) unless it is
    older than the one last applied (its `updated_at`, which every save of the
    project moves on): a PROJECT_UPDATED delivered late changes nothing. Returns
    the names of the fields changed, None for an older record. A config that does
    not parse raises LabelConfigError when `strict`, else is left out: a broken
    config never replaces a working one."""
    updated = store.ls_time(record.get("updated_at"))
    if updated is not None and project.ls_updated_at is not None and updated < project.ls_updated_at:
        return None
    changed = []
    title = record.get("title")
    if isinstance(title, str) and title[:200] != project.title:
        project.title = title[:200]
        changed.append("title")
    config = record.get("label_config")
    if isinstance(config, str) and config != project.label_config:
        try:
            parse_label_config(config)
        except LabelConfigError:
            if strict:
                raise
            logger.warning("Label Studio project %s: a record's label config does not parse; kept", project)
        else:
            project.label_config = config
            changed.append("label_config")
    fields = list(changed)
    if updated is not None and updated != project.ls_updated_at:
        project.ls_updated_at = updated
        fields.append("ls_updated_at")
    if fields:
        project.save(update_fields=fields)
    return changed


def _project_update(project, payload):
    record = payload.get("project")
    if not isinstance(record, dict):
        raise store.PayloadError("'project' is not a project record")
    changed = project_refresh(project, record)
    if changed is None:
        return f"older than the project as stored (updated_at {record.get('updated_at')}): nothing changed"
    if changed:
        return f"{', '.join(changed)} updated; model_version {project.model_version}"
    return "nothing changed"


def _apply(event, payload):
    """Applies one event; returns (status, note)."""
    action = event.action
    if action == "PROJECT_DELETED":
        project = _project(payload, create=False)
        if project.ls_deleted_at is None:
            project.ls_deleted_at = timezone.now()
            project.save(update_fields=["ls_deleted_at"])
        return WebhookEvent.Status.PROCESSED, "project flagged as deleted in Label Studio"
    known = {
        "TASKS_CREATED",
        "TASKS_DELETED",
        "ANNOTATIONS_DELETED",
        "PROJECT_CREATED",
        "PROJECT_UPDATED",
        "START_TRAINING",
        *ANNOTATION_ACTIONS,
    }
    if action not in known:
        return WebhookEvent.Status.IGNORED, f"vllm-batch does not act on {action}"
    project = _project(payload)
    record = payload.get("project")
    refreshed = None
    if action != "PROJECT_UPDATED" and isinstance(record, dict):
        # Every event carries the project as it is now: a missed PROJECT_UPDATED is caught up.
        refreshed = project_refresh(project, record, strict=False)
    if action == "TASKS_CREATED":
        for record in _records(payload, "tasks"):
            store.task_upsert(project=project, record=record)
        note = f"{len(payload['tasks'])} task(s)"
    elif action == "TASKS_DELETED":
        ids = [store.ls_id(r, "a deleted task") for r in _records(payload, "tasks")]
        note = f"{store.tasks_delete(project=project, ls_task_ids=ids)} task(s) marked deleted"
    elif action in ANNOTATION_ACTIONS:
        note = _apply_annotations(project, payload)
    elif action == "ANNOTATIONS_DELETED":
        ids = [store.ls_id(r, "a deleted annotation") for r in _records(payload, "annotations")]
        note = f"{store.annotations_delete(project=project, ls_annotation_ids=ids)} annotation(s) marked deleted"
    elif action == "PROJECT_UPDATED":
        note = _project_update(project, payload)
    elif action == "START_TRAINING":
        run = training.run_start(project=project, trigger=TrainingRun.Trigger.START_TRAINING, event=event)
        note = f"training run {run.pk} started"
    else:  # PROJECT_CREATED: _project created it
        note = "project known"
    if refreshed:
        note += f"; project {', '.join(refreshed)} updated"
    if action in ANNOTATION_ACTIONS or action == "TASKS_DELETED":
        run = training.start_if_due(project=project)
        if run is not None:
            note += f"; training run {run.pk} started (threshold)"
    return WebhookEvent.Status.PROCESSED, note


# Processing that kills the process (out of memory, a crash in a native library)
# rolls back everything it wrote; the attempt is counted in its own commit first,
# so the sweep gives such an event up after this many.
MAX_ATTEMPTS = 5
DONE = (WebhookEvent.Status.PROCESSED, WebhookEvent.Status.IGNORED)


def event_process(*, event_id, again=False):
    """Processes a stored event; returns its status. An event already processed
    (or ignored) is left alone unless `again`. A failure is recorded on the row
    (status failed, the error) and everything it wrote is rolled back. An event
    still `received` after MAX_ATTEMPTS attempts (each one died with its process)
    is failed without a further try, unless `again` (admin's re-process)."""
    counted = WebhookEvent.objects.filter(pk=event_id)
    if not again:
        counted = counted.exclude(status__in=DONE)
    if not counted.update(attempts=F("attempts") + 1):
        return WebhookEvent.objects.filter(pk=event_id).values_list("status", flat=True).first()
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().filter(pk=event_id).first()
        if event is None:
            return None
        if event.status in DONE and not again:
            return event.status
        if event.status == WebhookEvent.Status.RECEIVED and event.attempts > MAX_ATTEMPTS and not again:
            event.status = WebhookEvent.Status.FAILED
            event.error = (
                f"processing started {event.attempts - 1} times and never finished (the process died each time); "
                "left alone: re-process it from admin once the cause is fixed"
            )
            logger.error("Label Studio event %s (%s): %s", event.pk, event.action, event.error)
        else:
            try:
                payload = json.loads(bytes(event.body))
                with transaction.atomic():
                    event.status, note = _apply(event, payload)
                event.error = "" if event.status == WebhookEvent.Status.PROCESSED else note
            except (store.PayloadError, LabelConfigError, ApiError, ValueError) as exc:
                event.status, event.error = WebhookEvent.Status.FAILED, str(getattr(exc, "message", exc))[:MAX_ERROR]
            except Exception as exc:
                logger.exception("Label Studio event %s (%s) failed", event.pk, event.action)
                event.status, event.error = WebhookEvent.Status.FAILED, f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
            if event.status == WebhookEvent.Status.FAILED:
                logger.warning("Label Studio event %s (%s) failed: %s", event.pk, event.action, event.error)
        event.processed_at = timezone.now()
        event.save(update_fields=["status", "error", "processed_at", "updated_at"])
        return event.status


def events_process_again(*, events):
    """Admin's re-process: each event processed again; returns {status: count}."""
    counts = {}
    for event in events:
        status = event_process(event_id=event.pk, again=True)
        counts[status] = counts.get(status, 0) + 1
    return counts


# A few seconds: events are processed right after they are stored, and the sweep
# is for those the web process never got to (it died, or processing is off).
SWEEP_AFTER = timedelta(seconds=10)
SWEEP_LIMIT = 500


def events_sweep(*, older_than=SWEEP_AFTER, limit=SWEEP_LIMIT):
    """Processes the events still `received` that arrived more than `older_than`
    ago, oldest first, at most `limit` of them; returns how many it processed."""
    cutoff = timezone.now() - older_than
    ids = list(
        WebhookEvent.objects.filter(status=WebhookEvent.Status.RECEIVED, created_at__lt=cutoff)
        .order_by("created_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    for event_id in ids:
        with write_turn(exclusive=True):
            event_process(event_id=event_id)
    if ids:
        logger.info("Label Studio events: %s left received were processed by the sweep", len(ids))
    return len(ids)
