"""Pull a project from Label Studio's REST API into the annotation store, for
teams without webhooks (or to catch up after missed deliveries): its config and
title, every task with its annotations and predictions. The same store functions
as the webhooks, so running it twice, or alongside webhooks, changes nothing
more; tasks, annotations and predictions Label Studio no longer has are marked
deleted (predictions removed)."""

import logging
from dataclasses import dataclass

from django.db import transaction

from . import store, training
from .bulk import BulkError, label_studio_for
from .client import LabelStudioError
from .label_config import LabelConfigError, parse_label_config
from .models import LabelingTask

logger = logging.getLogger(__name__)


class SyncError(Exception):
    """Why a project cannot be synced, in words for the admin and the command line."""


@dataclass
class Synced:
    project: str
    tasks: int = 0
    annotations: int = 0
    annotations_applied: int = 0
    predictions: int = 0
    tasks_deleted: int = 0
    annotations_deleted: int = 0
    config_changed: bool = False

    def __str__(self):
        config = "; label config updated" if self.config_changed else ""
        return (
            f"{self.project}: {self.tasks} tasks, {self.annotations} annotations ({self.annotations_applied} new or "
            f"changed), {self.predictions} predictions; {self.tasks_deleted} tasks and {self.annotations_deleted} "
            f"annotations marked deleted{config}"
        )


def _refresh_project(project, remote, synced):
    changed = []
    title = remote.get("title")
    if isinstance(title, str) and title[:200] != project.title:
        project.title = title[:200]
        changed.append("title")
    config = remote.get("label_config")
    if isinstance(config, str) and config != project.label_config:
        try:
            parse_label_config(config)
        except LabelConfigError as exc:
            raise SyncError(f"{project}: Label Studio's label config cannot be used: {exc}") from None
        project.label_config = config
        changed.append("label_config")
        synced.config_changed = True
    updated = store.ls_time(remote.get("updated_at"))
    if updated is not None and updated != project.ls_updated_at:
        # The project as it is now: a PROJECT_UPDATED older than this, delivered late, changes nothing.
        project.ls_updated_at = updated
        changed.append("ls_updated_at")
    if changed:
        project.save(update_fields=changed)


@transaction.atomic
def _store_task(project, record, config, synced):
    project = store.project_locked(project.pk)
    task = store.task_upsert(project=project, record=record)
    annotations = [a for a in record.get("annotations") or [] if isinstance(a, dict)]
    for annotation in annotations:
        synced.annotations_applied += store.annotation_upsert(
            project=project, record=annotation, task=task, config=config
        )[1]
    synced.annotations += len(annotations)
    synced.annotations_deleted += store.annotations_delete_missing(
        project=project, task=task, keep_ids=[a.get("id") for a in annotations]
    )
    predictions = [p for p in record.get("predictions") or [] if isinstance(p, dict)]
    for prediction in predictions:
        store.prediction_upsert(project=project, task=task, record=prediction)
    store.predictions_delete_missing(project=project, task=task, keep_ids=[p.get("id") for p in predictions])
    synced.predictions += len(predictions)
    return task.ls_task_id


@transaction.atomic
def _finish(project, seen, synced):
    project = store.project_locked(project.pk)
    gone = (
        LabelingTask.objects.filter(project=project, deleted_at=None)
        .exclude(ls_task_id__in=seen)
        .values_list("ls_task_id", flat=True)
    )
    synced.tasks_deleted = store.tasks_delete(project=project, ls_task_ids=list(gone))
    training.start_if_due(project=project)


def sync_project(*, project, client=None):
    """Pulls the project from Label Studio (its client from labeling.bulk's
    label_studio_for unless given); returns a Synced. SyncError when Label Studio
    cannot be reached or refuses. Each task is stored in its own transaction, so a
    sync cut short keeps what it stored and the next one goes on."""
    owned = client is None
    try:
        client = client or label_studio_for(project)
    except BulkError as exc:
        raise SyncError(str(exc)) from None
    synced = Synced(project=str(project))
    seen = []
    try:
        _refresh_project(project, client.project(project.ls_project_id), synced)
        config = store.config_of(project)
        for record in client.tasks(project.ls_project_id, with_predictions=True):
            seen.append(_store_task(project, record, config, synced))
            synced.tasks += 1
    except LabelStudioError as exc:
        raise SyncError(f"{project}: {exc}") from None
    except store.PayloadError as exc:
        raise SyncError(f"{project}: Label Studio sent an unexpected record: {exc}") from None
    finally:
        if owned:
            client.close()
    _finish(project, seen, synced)
    logger.info("Label Studio sync: %s", synced)
    return synced
