"""A labeling project's predictions scored against its ground truth.

Ground truth: per task, the live ground-truth annotation (marked ground truth, not
cancelled, valid for the label config, neither it nor its task deleted; the most
recently marked one when a task has several). Predictions of a model_version: per
task, the newest of what this backend sent (PredictionLog rows without an error)
and what a sync pulled from Label Studio (LabelStudioPrediction). The figures
themselves come from labeling.accuracy (pure functions).

Results are cached with Django's cache framework per (project, model_version,
ground-truth revision); the key also holds a stamp of that version's predictions
(count and last change) and of the label config, so new predictions or a new
config are never answered from an old entry.

Model vs model: `ground_truth_predict_start` asks another registered model about
the ground-truth tasks only, as a vllm-batch batch built as the bulk flow builds
it (labeling.predictions); `ground_truth_predict_store` (run by the cluster when
the batch has finished) stores the answers locally as PredictionLog rows of that
model's model_version, so the comparison can show both on the same tasks.
"""

import copy
import hashlib
import json
import logging

from django.core.cache import cache
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

from jobs import services as jobs_services
from jobs.models import Batch, File
from workers.models import RegisteredModel

from . import bulk
from . import predictions as P
from .accuracy import accuracy_by_control
from .label_config import LabelConfigError
from .models import Annotation, LabelingProject, LabelingTask, LabelStudioPrediction, PredictionLog

logger = logging.getLogger(__name__)

CACHE_SECONDS = 24 * 3600
# Batch metadata that marks a ground-truth prediction run whose answers stay here.
META_STORE = "labelstudio_store"
STORE_LOCAL = "local"


class EvaluationError(Exception):
    """Why a ground-truth prediction run cannot start or be stored, in words for the admin."""


# Reads ----------------------------------------------------------------------


def controls_for(project):
    """{control name: {"type", "labels", "multiple"}} of the project's label config, as
    accuracy_by_control takes it; None when the config does not parse (the controls
    are then read off the results)."""
    try:
        config = project.parsed_config()
    except LabelConfigError:
        return None
    return {c.name: {"type": c.type, "labels": list(c.labels), "multiple": c.multiple} for c in config.controls}


def ground_truth(project):
    """{Label Studio task id: result} of the project's live ground truth."""
    rows = (
        Annotation.objects.filter(
            project=project,
            ground_truth=True,
            was_cancelled=False,
            valid=True,
            deleted_at__isnull=True,
            task__deleted_at__isnull=True,
        )
        .order_by("ground_truth_at", "ls_updated_at", "id")
        .values_list("task__ls_task_id", "result")
    )
    # Ordered oldest first, so the most recently marked annotation of a task wins.
    return dict(rows)


def predictions(project, model_version):
    """{Label Studio task id: result}: per task the newest prediction of `model_version`,
    from the backend's log (failed ones left out) or from Label Studio (sync)."""
    found = {}
    logged = (
        PredictionLog.objects.filter(project=project, model_version=model_version, error="", task_id__isnull=False)
        .order_by("created_at", "id")
        .values_list("task_id", "result", "created_at")
    )
    for task_id, result, at in logged:
        found[task_id] = (at, result)
    pulled = LabelStudioPrediction.objects.filter(project=project, model_version=model_version).values_list(
        "task__ls_task_id", "result", "ls_updated_at", "ls_created_at", "created_at"
    )
    for task_id, result, updated, created, stored in pulled:
        at = updated or created or stored
        if task_id not in found or found[task_id][0] <= at:
            found[task_id] = (at, result)
    return {task_id: result for task_id, (_, result) in found.items()}


def model_versions(project):
    """The model versions with predictions in the project, newest first, each
    {"model_version", "predictions": tasks with a prediction of it (either source)}."""
    tasks, latest = {}, {}
    logged = (
        PredictionLog.objects.filter(project=project, error="", task_id__isnull=False)
        .values_list("model_version", "task_id")
        .annotate(last=Max("created_at"))
    )
    pulled = (
        LabelStudioPrediction.objects.filter(project=project)
        .exclude(model_version="")
        .values_list("model_version", "task__ls_task_id")
        .annotate(last=Max("created_at"))
    )
    for version, task_id, last in [*logged, *pulled]:
        tasks.setdefault(version, set()).add(task_id)
        latest[version] = max(latest.get(version, last), last)
    ordered = sorted(tasks, key=lambda v: latest[v], reverse=True)
    return [{"model_version": v, "predictions": len(tasks[v])} for v in ordered]


# The figures (pure: explicit inputs) -------------------------------------------


def evaluate(*, truth, predicted, controls=None):
    """accuracy_by_control over the tasks with ground truth ({task id: result} each),
    plus `coverage` and `predictions_without_ground_truth` (predicted tasks nobody
    has labelled, so not scored)."""
    items = [(task_id, predicted.get(task_id), result) for task_id, result in sorted(truth.items())]
    figures = accuracy_by_control(items, controls=controls)
    figures["coverage"] = figures["predicted"] / figures["tasks"] if figures["tasks"] else None
    figures["predictions_without_ground_truth"] = len(set(predicted) - set(truth))
    return figures


def _task_outcome(task_id, prediction, truth, controls):
    """{control: True/False/None}: whether the one task is right for each control
    (None: its ground truth does not label the control, or the type is not measured)."""
    figures = accuracy_by_control([(task_id, prediction, truth)], controls=controls)["controls"]
    return {name: (None if f.get("accuracy") is None else f["accuracy"] == 1) for name, f in figures.items()}


def compare(*, truth, predicted_a, predicted_b, controls=None):
    """Two model versions on the SAME tasks: those with ground truth and a prediction
    from both. Returns {"tasks", "only_a", "only_b", "a": figures, "b": figures,
    "outcomes": {control: {both_correct, only_a_correct, only_b_correct, both_wrong}}}."""
    common = {task_id: result for task_id, result in truth.items() if task_id in predicted_a and task_id in predicted_b}
    a = evaluate(truth=common, predicted=predicted_a, controls=controls)
    b = evaluate(truth=common, predicted=predicted_b, controls=controls)
    outcomes = {
        name: {"both_correct": 0, "only_a_correct": 0, "only_b_correct": 0, "both_wrong": 0}
        for name, figures in a["controls"].items()
        if figures.get("supported", True)
    }
    for task_id, result in sorted(common.items()):
        right_a = _task_outcome(task_id, predicted_a[task_id], result, controls)
        right_b = _task_outcome(task_id, predicted_b[task_id], result, controls)
        for name, counts in outcomes.items():
            ra, rb = right_a.get(name), right_b.get(name)
            if ra is None or rb is None:
                continue
            key = "both_correct" if ra and rb else "only_a_correct" if ra else "only_b_correct" if rb else "both_wrong"
            counts[key] += 1
    with_truth = [t for t in truth if t in predicted_a or t in predicted_b]
    return {
        "tasks": len(common),
        "only_a": sum(1 for t in with_truth if t in predicted_a and t not in predicted_b),
        "only_b": sum(1 for t in with_truth if t in predicted_b and t not in predicted_a),
        "a": a,
        "b": b,
        "outcomes": outcomes,
    }


# Cached per project, model version and ground-truth revision ---------------------


def _revision(project):
    return LabelingProject.objects.filter(pk=project.pk).values_list("ground_truth_revision", flat=True).first() or 0


def _predictions_stamp(project, model_version):
    logged = PredictionLog.objects.filter(project=project, model_version=model_version).aggregate(
        n=Count("id"), last=Max("updated_at")
    )
    pulled = LabelStudioPrediction.objects.filter(project=project, model_version=model_version).aggregate(
        n=Count("id"), last=Max("updated_at")
    )
    return [logged["n"], str(logged["last"]), pulled["n"], str(pulled["last"])]


def _cache_key(kind, project, revision, versions):
    stamp = {
        "config": project.label_config,
        "versions": {v: _predictions_stamp(project, v) for v in versions},
    }
    digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:24]
    return f"labeling:{kind}:{project.pk}:r{revision}:{digest}"


def project_accuracy(project, model_version=None):
    """The figures of `model_version` (default: the project's current one) against the
    project's ground truth, with "model_version" and "ground_truth_revision"; cached."""
    model_version = model_version or project.model_version
    revision = _revision(project)
    key = _cache_key("accuracy", project, revision, [model_version])
    figures = cache.get(key)
    if figures is None:
        figures = evaluate(
            truth=ground_truth(project), predicted=predictions(project, model_version), controls=controls_for(project)
        )
        figures.update(model_version=model_version, ground_truth_revision=revision)
        cache.set(key, figures, CACHE_SECONDS)
    return figures


def project_comparison(project, model_version_a, model_version_b):
    """compare() of two model versions on the project's ground truth; cached."""
    revision = _revision(project)
    key = _cache_key("compare", project, revision, [model_version_a, model_version_b])
    result = cache.get(key)
    if result is None:
        result = compare(
            truth=ground_truth(project),
            predicted_a=predictions(project, model_version_a),
            predicted_b=predictions(project, model_version_b),
            controls=controls_for(project),
        )
        result.update(model_versions=[model_version_a, model_version_b], ground_truth_revision=revision)
        cache.set(key, result, CACHE_SECONDS)
    return result


# Model vs model: another model over the ground-truth tasks ------------------------


def _as_project_of(project, model):
    """The project as `model` would answer it: its config, templates and generation
    settings, zero-shot (few-shot examples would be drawn from the very ground truth
    the answers are scored against)."""
    other = copy.copy(project)
    other.model = model
    other.predictor = "llm"
    other.few_shot_k = 0
    other.model_version = other.compute_model_version()
    return other


def version_for(project, model):
    """The model_version `model` gets on this project in a ground-truth run."""
    return _as_project_of(project, model).model_version


def ground_truth_tasks(project):
    """The live tasks that have ground truth, as Label Studio task dicts ({"id", "data"})."""
    ids = ground_truth(project)
    rows = LabelingTask.objects.filter(project=project, ls_task_id__in=list(ids), deleted_at__isnull=True)
    return [{"id": t.ls_task_id, "data": t.data} for t in rows.order_by("ls_task_id")]


def ground_truth_predict_start(*, project, model, owner=None):
    """A batch asking `model` about every ground-truth task that has no prediction of
    its model version yet. Returns (batch or None when there is nothing to ask,
    model_version, tasks asked). The cluster stores the answers when it finishes
    (store_task, queued by labeling.tasks.batch_finished)."""
    if model.runner != RegisteredModel.Runner.GENERATE or not model.is_active:
        raise EvaluationError(f"{model.name} is not an active generation model.")
    try:
        config = project.parsed_config()
    except LabelConfigError as exc:
        raise EvaluationError(f"{project}: the labeling config cannot be used: {exc}") from None
    other = _as_project_of(project, model)
    done = set(predictions(project, other.model_version))
    tasks = [t for t in ground_truth_tasks(project) if t["id"] not in done]
    bodies = P.build_requests(other, tasks, config)
    lines = [
        json.dumps(
            {
                # bulk.batch_generations reads the task id back from this form.
                "custom_id": f"task-{task['id']}",
                "method": "POST",
                "url": bulk.ENDPOINT,
                "body": {"model": model.name, **body},
            },
            ensure_ascii=False,
        )
        for task, body in zip(tasks, bodies, strict=True)
        if body is not None
    ]
    if not lines:
        return None, other.model_version, 0
    with transaction.atomic():
        upload = ContentFile(
            ("\n".join(lines) + "\n").encode(), name=f"labelstudio-{project.ls_project_id}-ground-truth.jsonl"
        )
        input_file = jobs_services.file_create(
            owner=owner or bulk.service_user(), upload=upload, purpose=File.Purpose.BATCH
        )
        batch = jobs_services.batch_create(
            owner=input_file.owner,
            input_file=input_file,
            endpoint=bulk.ENDPOINT,
            metadata={
                bulk.META_PROJECT: project.ls_project,
                bulk.META_VERSION: other.model_version,
                META_STORE: STORE_LOCAL,
            },
        )
    logger.info(
        "Label Studio project %s: ground-truth batch %s, %d tasks for %s",
        project.ls_project,
        batch.id,
        len(lines),
        other.model_version,
    )
    return batch, other.model_version, len(lines)


def ground_truth_predict_store(*, batch):
    """Stores a finished ground-truth batch's answers as PredictionLog rows of its
    model version (failed ones with their error). Running it again stores nothing
    twice. Returns the number of rows written."""
    metadata = batch.metadata or {}
    if metadata.get(META_STORE) != STORE_LOCAL:
        raise EvaluationError(f"Batch {batch.id} is not a ground-truth prediction run.")
    project = LabelingProject.objects.filter(ls_project=metadata.get(bulk.META_PROJECT)).first()
    if project is None:
        raise EvaluationError(f"Batch {batch.id}: its labeling project was deleted.")
    if batch.status in Batch.ACTIVE:
        raise EvaluationError(f"Batch {batch.id} is still {batch.status}.")
    model_version = metadata[bulk.META_VERSION]
    try:
        config = project.parsed_config()
    except LabelConfigError as exc:
        raise EvaluationError(f"{project}: the labeling config cannot be used: {exc}") from None
    generations = bulk.batch_generations(batch)
    already = set(
        PredictionLog.objects.filter(
            project=project, model_version=model_version, created_at__gte=batch.created_at
        ).values_list("task_id", flat=True)
    )
    rows = LabelingTask.objects.filter(project=project, ls_task_id__in=[t for t in generations if t not in already])
    tasks = [{"id": t.ls_task_id, "data": t.data} for t in rows.order_by("ls_task_id")]
    results = P.results_from(project, tasks, [generations[t["id"]] for t in tasks], config)
    finished = batch.completed_at or batch.cancelled_at or batch.expired_at or timezone.now()
    latency_ms = max(0, round((finished - (batch.in_progress_at or batch.created_at)).total_seconds() * 1000))
    PredictionLog.objects.bulk_create(
        PredictionLog(
            project=project,
            task_id=task["id"],
            result=prediction.result,
            score=prediction.score,
            model_version=model_version,
            latency_ms=latency_ms,
            error=prediction.error,
        )
        for task, prediction in zip(tasks, results, strict=True)
    )
    logger.info(
        "Label Studio project %s: %d predictions of %s stored from batch %s",
        project.ls_project,
        len(tasks),
        model_version,
        batch.id,
    )
    return len(tasks)


def ground_truth_batches(project, limit=5):
    """The project's recent ground-truth prediction runs, newest first."""
    return list(
        Batch.objects.filter(
            **{f"metadata__{bulk.META_PROJECT}": project.ls_project, f"metadata__{META_STORE}": STORE_LOCAL}
        ).order_by("-created_at")[:limit]
    )


def is_ground_truth_run(batch):
    return (batch.metadata or {}).get(META_STORE) == STORE_LOCAL


def store_task(batch_id):
    """django-q entry point, queued by labeling.tasks.batch_finished once the batch
    has finished: stores a ground-truth batch's answers."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None:
        return "batch deleted"
    try:
        return f"{ground_truth_predict_store(batch=batch)} predictions stored"
    except EvaluationError as exc:
        logger.error("%s", exc)
        return str(exc)
