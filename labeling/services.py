"""Writes of the Label Studio backend: projects as Label Studio describes them,
and predictions from the worker that holds the project's model."""

import logging
import re
import time

from django.conf import settings
from django.db import IntegrityError, transaction

from batchsite.errors import ApiError
from workers import inference
from workers.models import RegisteredModel

from . import embedding_predictor, fewshot
from . import predictions as P
from .label_config import log_skipped, parse_label_config
from .models import LabelingProject, PredictionLog

logger = logging.getLogger(__name__)

PROJECT_KEY = re.compile(r"^(\d{1,18})(?:\.(\d+))?$")


class NoModel(ApiError):
    status_code = 503
    error_type = "server_error"


def parse_project_key(value):
    """Label Studio's "<id>.<created_at>" -> (the key as a string, the id)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    match = PROJECT_KEY.match(value) if isinstance(value, str) else None
    if match is None:
        raise ApiError(f"'project' must look like '<id>.<created_at>', got {value!r}.", param="project")
    return value, int(match.group(1))


def default_model():
    """The model new projects use: LABEL_STUDIO_MODEL if set, else the first active generation model."""
    models = RegisteredModel.objects.filter(is_active=True, runner=RegisteredModel.Runner.GENERATE)
    name = settings.LABEL_STUDIO_MODEL
    if name:
        return models.filter(name=name).first()
    return models.order_by("id").first()


@transaction.atomic
def project_sync(*, project_key, label_config, hostname=None, access_token=None):
    """The LabelingProject for Label Studio's project key, created on first sight;
    its config and Label Studio connection updated when they changed. The config
    must parse (LabelConfigError otherwise), so a broken config never replaces a
    working one."""
    key, ls_id = parse_project_key(project_key)
    config = parse_label_config(label_config)
    project = LabelingProject.objects.select_for_update().filter(ls_project=key).first()
    if project is None:
        try:
            with transaction.atomic():
                project = LabelingProject.objects.create(
                    ls_project=key,
                    ls_project_id=ls_id,
                    label_config=label_config,
                    model=default_model(),
                    ls_hostname=hostname or "",
                    ls_access_token=access_token or "",
                )
        except IntegrityError:  # a concurrent /setup created it first
            project = LabelingProject.objects.select_for_update().get(ls_project=key)
        else:
            logger.info("Label Studio project %s: created, model %s", key, project.model_version)
            log_skipped(config, key)
            return project
    changed = []
    if project.label_config != label_config:
        project.label_config = label_config
        changed.append("label_config")
        log_skipped(config, key)
    for field, value in (("ls_hostname", hostname), ("ls_access_token", access_token)):
        if value and getattr(project, field) != value:
            setattr(project, field, value)
            changed.append(field)
    if changed:
        project.save(update_fields=changed)
        logger.info("Label Studio project %s: %s updated, model %s", key, ", ".join(changed), project.model_version)
    return project


def _generations(chat_results):
    return [
        None if r is None else (r.text, r.token_logprobs, (r.error or {}).get("message") if r.error else None)
        for r in chat_results
    ]


def _llm_predictions(project, config, tasks, deadline):
    if project.model is None or not project.model.is_active:
        raise NoModel(
            "No model is set for this Label Studio project: choose one in the vllm-batch admin (Labeling projects).",
            code="model_not_set",
        )
    # Few-shot examples get half of the time at most (an embedding worker's swap-in included).
    examples = fewshot.prompt_examples(project, config, tasks, timeout=(deadline - time.monotonic()) / 2)
    requests = P.build_requests(project, tasks, config, examples)
    asked = [r for r in requests if r is not None]
    timeout = max(1.0, deadline - time.monotonic()) if project.few_shot_k else settings.LABEL_STUDIO_PREDICT_TIMEOUT
    answers = iter(inference.chat(asked, model=project.model.name, timeout=timeout))
    chat_results = [None if r is None else next(answers) for r in requests]
    return P.results_from(project, tasks, _generations(chat_results), config)


def predict_tasks(*, project, tasks):
    """One prediction entry per task, in order, from the project's predictor: the
    LLM (one inference call for all tasks, few-shot examples when the project has
    them on) or the embedding predictor. Each prediction is logged. Raises ApiError
    (503 no model or no worker holding it, 504 past the timeout) when the call as a
    whole fails."""
    config = project.parsed_config()
    if not project.sample_task_data and tasks and isinstance(tasks[0].get("data"), dict):
        project.sample_task_data = tasks[0]["data"]
        project.save(update_fields=["sample_task_data"])
    started = time.monotonic()
    deadline = started + settings.LABEL_STUDIO_PREDICT_TIMEOUT
    if project.predictor == "embedding":
        task_predictions = embedding_predictor.predict(
            project, config, tasks, timeout=settings.LABEL_STUDIO_PREDICT_TIMEOUT
        )
    else:
        task_predictions = _llm_predictions(project, config, tasks, deadline)
    latency_ms = round((time.monotonic() - started) * 1000)
    for task, prediction in zip(tasks, task_predictions, strict=True):
        if prediction.error:
            logger.warning("Label Studio project %s, task %s: %s", project.ls_project, task.get("id"), prediction.error)
    PredictionLog.objects.bulk_create(
        PredictionLog(
            project=project,
            task_id=task.get("id") if isinstance(task.get("id"), int) else None,
            result=prediction.result,
            score=prediction.score,
            model_version=project.model_version,
            latency_ms=latency_ms,
            error=prediction.error,
        )
        for task, prediction in zip(tasks, task_predictions, strict=True)
    )
    return [p.entry(project.model_version) for p in task_predictions]
