"""Writes of the annotation store: Label Studio's tasks, annotations and
predictions as webhooks and sync deliver them, and ground truth.

Every write is idempotent: Label Studio's ids are the keys, an annotation or task
older than (or as old as) the stored one changes nothing, and deletions are final
(Label Studio never reuses an id). Callers hold the project's row lock
(`project_locked`), so deliveries of one project apply one at a time.
"""

import json
from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from batchsite.errors import ApiError, Conflict, NotFound

from .annotation_check import result_problems
from .label_config import LabelConfigError
from .models import Annotation, LabelingProject, LabelingTask, LabelStudioPrediction

MAX_REASON = 2000


class PayloadError(ValueError):
    """A Label Studio record is not what its event promises; the message says what."""


def ls_time(value):
    """Label Studio's ISO timestamp as an aware datetime, or None."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return None
    if parsed is not None and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, timezone.utc)
    return parsed


def ls_id(record, what):
    """The integer `id` of a Label Studio record ({"id": ...} or the id itself)."""
    value = record.get("id") if isinstance(record, dict) else record
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{what} has no integer id: {str(record)[:200]}")
    return value


def _user_id(value):
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def project_locked(project_id):
    """The project's row, locked until the transaction ends (serialises a project's writes on PostgreSQL)."""
    return LabelingProject.objects.select_for_update().get(pk=project_id)


def config_of(project):
    """The project's parsed label config, or None when it does not parse."""
    try:
        return project.parsed_config()
    except LabelConfigError:
        return None


def bump_revision(project):
    LabelingProject.objects.filter(pk=project.pk).update(ground_truth_revision=F("ground_truth_revision") + 1)
    project.refresh_from_db(fields=["ground_truth_revision"])


def _truth_signature(annotation):
    """What accuracy sees of an annotation: None unless it is live, valid ground truth."""
    if annotation is None or not annotation.ground_truth or annotation.deleted_at is not None:
        return None
    if not annotation.valid or annotation.task.deleted_at is not None:
        return None
    return json.dumps(annotation.result, sort_keys=True)


def _set_ground_truth(annotation, value, now):
    value = bool(value) and not annotation.was_cancelled
    if value and not annotation.ground_truth:
        annotation.ground_truth_at = now
    elif not value:
        annotation.ground_truth_at = None
    annotation.ground_truth = value


# Tasks ------------------------------------------------------------------------


def task_upsert(*, project, record):
    """Stores a Label Studio task record ({"id", "data", "meta", "created_at",
    "updated_at"}); returns the LabelingTask. A record not newer than the stored
    one, or for a deleted task, changes nothing."""
    task_id = ls_id(record, "a task")
    data = record.get("data")
    if not isinstance(data, dict):
        raise PayloadError(f"task {task_id} has no data object")
    updated = ls_time(record.get("updated_at"))
    task = LabelingTask.objects.filter(project=project, ls_task_id=task_id).first()
    if task is not None:
        if task.deleted_at is not None:
            return task
        if task.ls_updated_at and updated and updated <= task.ls_updated_at:
            return task
    else:
        task = LabelingTask(project=project, ls_task_id=task_id)
    task.data = data
    task.meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    task.ls_created_at = ls_time(record.get("created_at")) or task.ls_created_at
    task.ls_updated_at = updated or task.ls_updated_at
    task.save()
    return task


def tasks_delete(*, project, ls_task_ids):
    """Marks the tasks and their annotations deleted. A task not seen yet is kept
    as a deleted row, so a late TASKS_CREATED cannot bring it back. Returns how
    many tasks were newly marked."""
    now = timezone.now()
    ids = sorted(set(ls_task_ids))
    known = set(LabelingTask.objects.filter(project=project, ls_task_id__in=ids).values_list("ls_task_id", flat=True))
    LabelingTask.objects.bulk_create(
        [LabelingTask(project=project, ls_task_id=i, data={}, deleted_at=now) for i in ids if i not in known]
    )
    live = LabelingTask.objects.filter(project=project, ls_task_id__in=known, deleted_at=None)
    truth = Annotation.objects.filter(task__in=live, ground_truth=True, deleted_at=None, valid=True).exists()
    Annotation.objects.filter(task__in=live, deleted_at=None).update(deleted_at=now, updated_at=now)
    marked = live.update(deleted_at=now, updated_at=now)
    if truth:
        bump_revision(project)
    return marked


# Annotations -----------------------------------------------------------------


def annotation_upsert(*, project, record, task, config):
    """Stores a Label Studio annotation record of `task`, checked against `config`
    (None: the project's config does not parse, so nothing is valid). Returns
    (annotation, applied): not applied when the stored one is as new or newer, or
    deleted. Label Studio's `ground_truth` flag is followed when it changes (or on
    first sight); a mark or unmark made here stands until then. Cancelled
    (skipped) annotations are never ground truth."""
    annotation_id = ls_id(record, "an annotation")
    updated = ls_time(record.get("updated_at"))
    existing = Annotation.objects.select_related("task").filter(project=project, ls_annotation_id=annotation_id).first()
    if existing is not None:
        if existing.deleted_at is not None:
            return existing, False
        if existing.ls_updated_at and updated and updated <= existing.ls_updated_at:
            return existing, False
    before = _truth_signature(existing)
    annotation = existing or Annotation(project=project, ls_annotation_id=annotation_id)
    annotation.task = task
    result = record.get("result")
    annotation.result = result if result is not None else []
    annotation.completed_by = _user_id(record.get("completed_by"))
    annotation.was_cancelled = bool(record.get("was_cancelled"))
    flag = bool(record.get("ground_truth"))
    follows_label_studio = existing is None or existing.ls_ground_truth != flag
    annotation.ls_ground_truth = flag
    _set_ground_truth(annotation, flag if follows_label_studio else annotation.ground_truth, timezone.now())
    problems = (
        ["the project's label config does not parse"]
        if config is None
        else result_problems(config, annotation.result, task.data)
    )
    annotation.valid = not problems
    annotation.invalid_reason = "; ".join(problems)[:MAX_REASON]
    annotation.ls_created_at = ls_time(record.get("created_at")) or annotation.ls_created_at
    annotation.ls_updated_at = updated or annotation.ls_updated_at
    annotation.save()
    if _truth_signature(annotation) != before:
        bump_revision(project)
    return annotation, True


def annotations_delete(*, project, ls_annotation_ids):
    """Marks annotations deleted; returns how many were newly marked. Ids never
    seen are left alone (there is no task to keep them under)."""
    now = timezone.now()
    live = Annotation.objects.filter(project=project, ls_annotation_id__in=set(ls_annotation_ids), deleted_at=None)
    truth = live.filter(ground_truth=True, valid=True).exists()
    marked = live.update(deleted_at=now, updated_at=now)
    if truth:
        bump_revision(project)
    return marked


def annotations_delete_missing(*, project, task, keep_ids):
    """Sync: a task's annotations Label Studio no longer has are marked deleted."""
    gone = Annotation.objects.filter(project=project, task=task, deleted_at=None).exclude(ls_annotation_id__in=keep_ids)
    return annotations_delete(project=project, ls_annotation_ids=list(gone.values_list("ls_annotation_id", flat=True)))


# Predictions -------------------------------------------------------------------


def prediction_upsert(*, project, task, record):
    """Stores one prediction Label Studio holds for `task` (any model's)."""
    prediction_id = ls_id(record, "a prediction")
    score = record.get("score")
    values = {
        "task": task,
        "result": record.get("result") if isinstance(record.get("result"), list) else [],
        "score": float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
        "model_version": str(record.get("model_version") or "")[:300],
        "ls_created_at": ls_time(record.get("created_at")),
        "ls_updated_at": ls_time(record.get("updated_at")),
    }
    prediction, _ = LabelStudioPrediction.objects.update_or_create(
        project=project, ls_prediction_id=prediction_id, defaults=values
    )
    return prediction


def predictions_delete_missing(*, project, task, keep_ids):
    return (
        LabelStudioPrediction.objects.filter(project=project, task=task)
        .exclude(ls_prediction_id__in=keep_ids)
        .delete()[0]
    )


# Ground truth -------------------------------------------------------------------


def _ids(values, name):
    if not isinstance(values, list | tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ApiError(f"'{name}' must be a list of integer ids.", param=name, code="invalid_type")
    return list(dict.fromkeys(values))


@transaction.atomic
def ground_truth_set(*, project, value, annotation_ids=(), task_ids=()):
    """Marks (value True) or unmarks annotations as ground truth, named by Label
    Studio's annotation ids or task ids. Marking a task marks its most recently
    updated annotation that is not cancelled; unmarking a task unmarks all of its
    annotations. Returns the annotations concerned, ordered by id. NotFound for
    ids the project does not have (or that are deleted), Conflict for cancelled
    annotations; nothing changes then."""
    project = project_locked(project.pk)
    annotation_ids, task_ids = _ids(annotation_ids, "annotations"), _ids(task_ids, "tasks")
    chosen = {}
    live = Annotation.objects.select_related("task").filter(project=project, deleted_at=None, task__deleted_at=None)
    if annotation_ids:
        found = {a.ls_annotation_id: a for a in live.filter(ls_annotation_id__in=annotation_ids)}
        missing = [i for i in annotation_ids if i not in found]
        if missing:
            raise NotFound(
                f"Label Studio project {project.ls_project_id} has no annotation {missing[0]}.", param="annotations"
            )
        chosen.update(found)
    if task_ids:
        tasks = set(
            LabelingTask.objects.filter(project=project, ls_task_id__in=task_ids, deleted_at=None).values_list(
                "ls_task_id", flat=True
            )
        )
        missing = [i for i in task_ids if i not in tasks]
        if missing:
            raise NotFound(f"Label Studio project {project.ls_project_id} has no task {missing[0]}.", param="tasks")
        of_tasks = live.filter(task__ls_task_id__in=task_ids)
        if value:
            latest = {}
            for annotation in of_tasks.filter(was_cancelled=False).order_by("ls_updated_at", "ls_annotation_id"):
                latest[annotation.task.ls_task_id] = annotation
            empty = [i for i in task_ids if i not in latest]
            if empty:
                raise Conflict(
                    f"Task {empty[0]} has no annotation that is not cancelled to mark.",
                    param="tasks",
                    code="no_annotation",
                )
            chosen.update({a.ls_annotation_id: a for a in latest.values()})
        else:
            chosen.update({a.ls_annotation_id: a for a in of_tasks})
    if value:
        cancelled = [i for i, a in chosen.items() if a.was_cancelled]
        if cancelled:
            raise Conflict(
                f"Annotation {cancelled[0]} was cancelled (skipped) and cannot be ground truth.",
                param="annotations",
                code="annotation_cancelled",
            )
    now = timezone.now()
    changed = False
    for annotation in chosen.values():
        if annotation.ground_truth == value:
            continue
        before = _truth_signature(annotation)
        _set_ground_truth(annotation, value, now)
        annotation.save(update_fields=["ground_truth", "ground_truth_at", "updated_at"])
        changed = changed or _truth_signature(annotation) != before
    if changed:
        bump_revision(project)
    return [chosen[i] for i in sorted(chosen)]
