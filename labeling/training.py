"""Fine-tuning data from a project's annotations, in OpenAI's chat format.

One JSONL line per annotation: the prompt /predict sends for its task (same
templates, zero-shot) as the user turn, and the annotation written as the model
is guided to answer (the label for a single single-choice control, else the JSON
object with one key per control) as the assistant turn. Ground truth and
accepted annotations (live, not cancelled, valid for the config) go in; a task
that has ground truth contributes only its ground-truth annotations, so the file
never teaches two answers where one was chosen. Lines are ordered by task id,
then annotation id, and hold no timestamps: the same annotations give the same
bytes.
"""

import json
import logging

from django.db import transaction
from django.utils import timezone

from jobs import services as jobs_services
from jobs.models import File

from . import predictions as P
from . import selectors
from .bulk import service_user
from .label_config import LabelConfigError
from .models import TrainingRun

logger = logging.getLogger(__name__)

EXPORT_TASK = "labeling.tasks.export_training"


def _enqueue(run_id, owner_id=None):
    from django_q.tasks import async_task

    async_task(
        EXPORT_TASK, run_id, owner_id, task_name=f"labelstudio training run {run_id}", group="labelstudio-training"
    )


def run_start(*, project, trigger, event=None, owner=None):
    """Records a training run (status running) and queues its export once the
    caller's transaction commits. The file belongs to `owner` (an admin who
    started it by hand), else to the `labelstudio` service user."""
    run = TrainingRun.objects.create(
        project=project,
        trigger=trigger,
        event=event,
        model_version=project.model_version,
        ground_truth_revision=project.ground_truth_revision,
    )
    owner_id = owner.pk if owner is not None else None
    transaction.on_commit(lambda: _enqueue(run.pk, owner_id))
    return run


def new_ground_truth(project):
    """Ground-truth annotations marked since the project's latest training run (all, before the first)."""
    annotations = selectors.ground_truth_annotations(project=project)
    latest = project.training_runs.order_by("-created_at").first()
    if latest is not None:
        annotations = annotations.filter(ground_truth_at__gt=latest.created_at)
    return annotations.count()


def start_if_due(*, project):
    """A threshold training run when the project's `train_after_ground_truth` new
    ground-truth annotations are there; None otherwise. The caller holds the
    project's lock, so two events cannot both start one."""
    threshold = project.train_after_ground_truth
    if not threshold or new_ground_truth(project) < threshold:
        return None
    return run_start(project=project, trigger=TrainingRun.Trigger.THRESHOLD)


def _chosen_annotations(project):
    truth_tasks = set(selectors.ground_truth_annotations(project=project).values_list("task_id", flat=True))
    return [
        a for a in selectors.accepted_annotations(project=project) if a.task_id not in truth_tasks or a.ground_truth
    ]


class Export:
    """The lines of a project's fine-tuning file and what went into it."""

    def __init__(self, project):
        config = project.parsed_config()
        annotations = _chosen_annotations(project)
        tasks = [{"id": a.task.ls_task_id, "data": a.task.data} for a in annotations]
        requests = P.build_requests(project, tasks, config)
        self.lines, self.ground_truth, self.skipped = [], 0, 0
        for annotation, request in zip(annotations, requests, strict=True):
            answer = None if request is None else P.answer_text(config, annotation.result, annotation.task.data)
            if answer is None:
                self.skipped += 1
                continue
            messages = [*request["messages"], {"role": "assistant", "content": answer}]
            self.lines.append(json.dumps({"messages": messages}, ensure_ascii=False, separators=(",", ":")))
            self.ground_truth += annotation.ground_truth


def export(*, run_id, owner_id=None):
    """Writes the run's file (a jobs File, purpose fine-tune, owned by `owner_id`
    or else the `labelstudio` service user) and records the counts; a run without
    any line, or whose config does not parse, ends failed with the reason."""
    run = TrainingRun.objects.select_related("project").filter(pk=run_id).first()
    if run is None or run.status != TrainingRun.Status.RUNNING:
        return run
    project = run.project
    try:
        built = Export(project)
    except LabelConfigError as exc:
        return _finish(run, error=f"The label config cannot be used: {exc}")
    run.examples, run.ground_truth_count, run.skipped = len(built.lines), built.ground_truth, built.skipped
    if not built.lines:
        return _finish(run, error="No annotation to export: the project has no accepted annotations with an answer.")
    file = jobs_services.file_write_lines(
        owner_id=owner_id or service_user().pk,
        purpose=File.Purpose.FINE_TUNE,
        filename=f"labelstudio-{project.ls_project_id}-run-{run.pk}.jsonl",
        lines=built.lines,
    )
    with transaction.atomic():
        file.save()
        run.file = file
        return _finish(run)


def _finish(run, error=""):
    run.status = TrainingRun.Status.FAILED if error else TrainingRun.Status.SUCCEEDED
    run.error = error
    run.finished_at = timezone.now()
    run.save()
    if error:
        logger.warning("Label Studio training run %s (%s): %s", run.pk, run.project, error)
    else:
        logger.info(
            "Label Studio training run %s (%s): %s examples in %s", run.pk, run.project, run.examples, run.file_id
        )
    return run
