from .models import Annotation, LabelingProject, LabelingTask, LabelStudioPrediction, PredictionLog


def model_versions():
    """The model versions the projects use now, most recently changed first."""
    versions = LabelingProject.objects.order_by("-updated_at").values_list("model_version", flat=True)
    return list(dict.fromkeys(versions))


def recent_predictions(*, project, limit=20):
    return PredictionLog.objects.filter(project=project).order_by("-created_at")[:limit]


def project_for_ls_id(ls_project_id):
    """The LabelingProject of a Label Studio project id (the most recent one when
    projects of several Label Studio servers share the id), or None."""
    return LabelingProject.objects.filter(ls_project_id=ls_project_id).order_by("-id").first()


def live_tasks(*, project):
    """The project's tasks Label Studio still has, by Label Studio id."""
    return LabelingTask.objects.filter(project=project, deleted_at=None).order_by("ls_task_id")


def accepted_annotations(*, project):
    """Live annotations that fit the label config and were not cancelled, with
    their tasks, by task id then annotation id."""
    return (
        Annotation.objects.filter(
            project=project, deleted_at=None, task__deleted_at=None, was_cancelled=False, valid=True
        )
        .select_related("task")
        .order_by("task__ls_task_id", "ls_annotation_id")
    )


def ground_truth_annotations(*, project, include_invalid=False):
    """The project's ground truth: live annotations marked as such (never cancelled
    ones), with their tasks, by task id then annotation id. Invalid ones (that do
    not fit the label config) are left out unless asked for."""
    annotations = Annotation.objects.filter(
        project=project, ground_truth=True, deleted_at=None, task__deleted_at=None
    ).select_related("task")
    if not include_invalid:
        annotations = annotations.filter(valid=True)
    return annotations.order_by("task__ls_task_id", "ls_annotation_id")


def ground_truth_by_task(*, project):
    """{Label Studio task id: the ground-truth Annotation}: one per task, the most
    recently updated when a task has several."""
    chosen = {}
    for annotation in ground_truth_annotations(project=project).order_by("ls_updated_at", "ls_annotation_id"):
        chosen[annotation.task.ls_task_id] = annotation
    return dict(sorted(chosen.items()))


def label_studio_predictions(*, project, model_version=None):
    """Predictions pulled from Label Studio by sync (of one model_version when
    given) on live tasks, with their tasks, by task id then prediction id."""
    predictions = LabelStudioPrediction.objects.filter(project=project, task__deleted_at=None)
    if model_version is not None:
        predictions = predictions.filter(model_version=model_version)
    return predictions.select_related("task").order_by("task__ls_task_id", "ls_prediction_id")
