from .models import LabelingProject, PredictionLog


def model_versions():
    """The model versions the projects use now, most recently changed first."""
    versions = LabelingProject.objects.order_by("-updated_at").values_list("model_version", flat=True)
    return list(dict.fromkeys(versions))


def recent_predictions(*, project, limit=20):
    return PredictionLog.objects.filter(project=project).order_by("-created_at")[:limit]
