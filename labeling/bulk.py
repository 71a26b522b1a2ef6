"""Predictions for a whole Label Studio project through a vllm-batch batch.

For projects too large for Label Studio's "Retrieve predictions" (one /predict
call under a 100 s timeout): the project's tasks, read through Label Studio's API,
become one chat request each, built as /predict builds them (guided decoding, so
every answer fits the labeling config); they run as an ordinary batch, and its
results are parsed as /predict parses them and stored in Label Studio as
predictions (one bulk import per 500).

The batch carries the project and model version in its metadata, so no table is
needed: `predict_push` can run again for the same batch (after a failure to reach
Label Studio, say) and skips tasks that already hold that model version's
prediction. `predict_start(push_when_done=True)` marks the batch (META_PUSH) so
the cluster pushes it when it finishes (`push_task`, queued by
labeling.tasks.batch_finished); `predict` waits for the batch and pushes in the caller.
"""

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.db import transaction

from jobs import services as jobs_services
from jobs.models import Batch, File

from . import predictions as P
from . import services
from .client import LabelStudio, LabelStudioError
from .label_config import LabelConfigError
from .models import LabelingProject

logger = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
META_PROJECT = "labelstudio_project"
META_VERSION = "labelstudio_model_version"
# Set by predict_start(push_when_done=True): the cluster stores the predictions when the batch finishes.
META_PUSH = "labelstudio_push"
PUSH_WHEN_DONE = "when_done"
SERVICE_USER = "labelstudio"
WAIT_INTERVAL = 1.0


class BulkError(Exception):
    """Why a bulk prediction cannot start or be stored, in words for the admin and the command line."""


@dataclass
class Started:
    batch: Batch | None
    tasks: int  # tasks in the project
    requests: int  # tasks asked (the batch's lines)
    already_predicted: int
    no_text: int  # tasks without the text their controls label


@dataclass
class Pushed:
    batch_id: str
    stored: int = 0
    already_predicted: int = 0
    failed: int = 0  # generation failed or gave no valid answer
    gone: int = 0  # tasks deleted from Label Studio since the batch started
    errors: list = field(default_factory=list)  # the first few reasons

    def __str__(self):
        return (
            f"{self.batch_id}: {self.stored} predictions stored in Label Studio, {self.already_predicted} tasks "
            f"already had one, {self.failed} failed, {self.gone} tasks gone"
        )


def label_studio_for(project):
    """A client for the Label Studio the project lives in: LABEL_STUDIO_URL /
    LABEL_STUDIO_API_KEY when set, else the hostname and token Label Studio sent in /setup."""
    url = settings.LABEL_STUDIO_URL or project.ls_hostname
    token = settings.LABEL_STUDIO_API_KEY or project.ls_access_token
    if not url or not token:
        raise BulkError(
            f"{project}: no Label Studio URL and API token. Connect the project's model in Label Studio "
            "(its /setup call sends both) or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY."
        )
    return LabelStudio(url, token)


def find_project(reference, *, client=None):
    """The LabelingProject for a Label Studio project id or key "<id>.<created_at>".
    A project the backend has not met yet is created from Label Studio's API
    (LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set for that)."""
    key, ls_id = services.parse_project_key(str(reference).strip())
    matches = list(LabelingProject.objects.filter(ls_project=key) if "." in key else [])
    if not matches:
        matches = list(LabelingProject.objects.filter(ls_project_id=ls_id))
    if len(matches) > 1:
        keys = ", ".join(p.ls_project for p in matches)
        raise BulkError(f"Several Label Studio projects have id {ls_id} ({keys}); name one by its key.")
    if matches:
        return matches[0]
    if client is None and not (settings.LABEL_STUDIO_URL and settings.LABEL_STUDIO_API_KEY):
        raise BulkError(
            f"No labeling project for Label Studio project {reference}: connect vllm-batch as its model in "
            "Label Studio first, or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY."
        )
    owned = client is None
    client = client or LabelStudio(settings.LABEL_STUDIO_URL, settings.LABEL_STUDIO_API_KEY)
    try:
        remote = client.project(ls_id)
    except LabelStudioError as exc:
        raise BulkError(f"Label Studio project {ls_id}: {exc}") from None
    finally:
        if owned:
            client.close()
    created = datetime.fromisoformat(remote["created_at"].replace("Z", "+00:00"))
    return services.project_sync(
        project_key=f"{remote['id']}.{int(created.timestamp())}", label_config=remote["label_config"]
    )


def service_user():
    """The owner of batches started from the command line: a user that cannot log in."""
    user, created = get_user_model().objects.get_or_create(username=SERVICE_USER, defaults={"is_active": False})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


def may_write_to_label_studio(user):
    """Whether a batch's owner may have its results written to Label Studio and to
    a project's stored predictions when it finishes: batch metadata is the API
    user's own input, so naming a project is not enough."""
    return user.username == SERVICE_USER or user.has_perm("labeling.change_labelingproject")


def _has_prediction(task, model_version):
    return any(p.get("model_version") == model_version for p in task.get("predictions") or [])


def _custom_id(task_id):
    return f"task-{task_id}"


def _task_id(custom_id):
    prefix, _, number = custom_id.partition("-")
    return int(number) if prefix == "task" and number.isdigit() else None


def _config(project):
    if project.model is None or not project.model.is_active:
        raise BulkError(f"{project}: no active model is set; choose one in the admin (Labeling projects).")
    try:
        return project.parsed_config()
    except LabelConfigError as exc:
        raise BulkError(f"{project}: the labeling config cannot be used: {exc}") from None


def predict_start(*, project, owner=None, client=None, redo=False, push_when_done=False):
    """Starts a batch with one request per task that has no prediction of the
    project's model version yet (every task with `redo`). Returns a Started;
    its batch is None when there is nothing to ask."""
    config = _config(project)
    owned = client is None
    client = client or label_studio_for(project)
    try:
        tasks = list(client.tasks(project.ls_project_id, with_predictions=True))
    except LabelStudioError as exc:
        raise BulkError(f"{project}: cannot read its tasks: {exc}") from None
    finally:
        if owned:
            client.close()
    pending = tasks if redo else [t for t in tasks if not _has_prediction(t, project.model_version)]
    bodies = P.build_requests(project, pending, config)
    lines = [
        json.dumps(
            {
                "custom_id": _custom_id(task["id"]),
                "method": "POST",
                "url": ENDPOINT,
                "body": {"model": project.model.name, **body},
            },
            ensure_ascii=False,
        )
        for task, body in zip(pending, bodies, strict=True)
        if body is not None
    ]
    started = Started(
        batch=None,
        tasks=len(tasks),
        requests=len(lines),
        already_predicted=len(tasks) - len(pending),
        no_text=len(pending) - len(lines),
    )
    if not lines:
        return started
    with transaction.atomic():
        upload = ContentFile(("\n".join(lines) + "\n").encode(), name=f"labelstudio-{project.ls_project_id}.jsonl")
        input_file = jobs_services.file_create(owner=owner or service_user(), upload=upload, purpose=File.Purpose.BATCH)
        metadata = {META_PROJECT: project.ls_project, META_VERSION: project.model_version}
        if push_when_done:
            metadata[META_PUSH] = PUSH_WHEN_DONE
        started.batch = jobs_services.batch_create(
            owner=input_file.owner, input_file=input_file, endpoint=ENDPOINT, metadata=metadata
        )
    logger.info(
        "Label Studio project %s: batch %s with %d tasks (%d already predicted, %d without text)",
        project.ls_project,
        started.batch.id,
        started.requests,
        started.already_predicted,
        started.no_text,
    )
    return started


def pushes_when_done(batch):
    """A bulk prediction whose predictions the cluster stores when it finishes."""
    metadata = batch.metadata or {}
    return bool(metadata.get(META_PROJECT) and metadata.get(META_VERSION)) and metadata.get(META_PUSH) == PUSH_WHEN_DONE


def wait_finished(batch, *, timeout):
    """The batch once it is no longer running; BulkError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        batch.refresh_from_db()
        if batch.status not in Batch.ACTIVE:
            return batch
        if time.monotonic() > deadline:
            raise BulkError(
                f"Batch {batch.id} is still {batch.status} ({batch.completed_requests + batch.failed_requests}/"
                f"{batch.total_requests} done) after {timeout:g} s; store its predictions later with "
                f"`manage.py labelstudio push {batch.id}`."
            )
        time.sleep(WAIT_INTERVAL)


def _read_lines(file_id):
    if not file_id:
        return
    with jobs_services.file_open(File.objects.get(pk=file_id)) as handle:
        for raw in handle:
            if raw.strip():
                yield json.loads(raw)


def _generation(line):
    """(text, [(token, logprob)], error) from one output or error file line."""
    response = line.get("response") or {}
    body = response.get("body") or {}
    if line.get("error") or response.get("status_code") != 200 or not body.get("choices"):
        error = line.get("error") or body.get("error") or {}
        return None, [], (error.get("message") if isinstance(error, dict) else str(error)) or "the request failed"
    choice = body["choices"][0]
    logprobs = (choice.get("logprobs") or {}).get("content") or []
    return choice["message"]["content"], [(e["token"], e["logprob"]) for e in logprobs], None


def batch_generations(batch):
    """{task id: (text, token_logprobs, error)} from the batch's output and error files."""
    generations = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        for line in _read_lines(file_id):
            task_id = _task_id(str(line.get("custom_id", "")))
            if task_id is not None:
                generations[task_id] = _generation(line)
    return generations


def predict_push(*, batch, client=None):
    """Stores the finished batch's results in Label Studio as predictions of the
    model version it ran with; tasks that already have one are skipped. Returns a Pushed."""
    metadata = batch.metadata or {}
    project = LabelingProject.objects.filter(ls_project=metadata.get(META_PROJECT)).select_related("model").first()
    if project is None:
        raise BulkError(f"Batch {batch.id} is not a Label Studio bulk prediction, or its project was deleted.")
    if batch.status in Batch.ACTIVE:
        raise BulkError(f"Batch {batch.id} is still {batch.status}.")
    model_version = metadata.get(META_VERSION) or project.model_version
    config = _config(project)
    generations = batch_generations(batch)
    report = Pushed(batch_id=batch.id)
    owned = client is None
    client = client or label_studio_for(project)
    try:
        tasks = {t["id"]: t for t in client.tasks(project.ls_project_id, with_predictions=True)}
        pending = []
        for task_id in generations:
            task = tasks.get(task_id)
            if task is None:
                report.gone += 1
            elif _has_prediction(task, model_version):
                report.already_predicted += 1
            else:
                pending.append(task)
        predictions = P.results_from(project, pending, [generations[t["id"]] for t in pending], config)
        items = []
        for task, prediction in zip(pending, predictions, strict=True):
            if prediction.error:
                report.failed += 1
                if len(report.errors) < 5:
                    report.errors.append(f"task {task['id']}: {prediction.error}")
                continue
            items.append({"task": task["id"], **prediction.entry(model_version)})
        report.stored = client.create_predictions(project.ls_project_id, items) if items else 0
    except LabelStudioError as exc:
        raise BulkError(f"Batch {batch.id}: storing predictions in Label Studio failed: {exc}") from None
    finally:
        if owned:
            client.close()
    logger.info("Label Studio project %s: %s", project.ls_project, report)
    for error in report.errors:
        logger.warning("Label Studio project %s, batch %s, %s", project.ls_project, batch.id, error)
    return report


def predict(*, project, owner=None, client=None, timeout=3600.0, redo=False):
    """Starts the batch, waits for it (bounded) and stores its predictions.
    Returns (Started, Pushed or None when there was nothing to ask)."""
    started = predict_start(project=project, owner=owner, client=client, redo=redo)
    if started.batch is None:
        return started, None
    batch = wait_finished(started.batch, timeout=timeout)
    return started, predict_push(batch=batch, client=client)


def push_task(batch_id):
    """django-q entry point, queued by labeling.tasks.batch_finished once the batch
    has finished: stores its predictions in Label Studio."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None:
        return "batch deleted"
    try:
        return str(predict_push(batch=batch))
    except BulkError as exc:
        logger.error("%s", exc)
        return str(exc)


def describe(started):
    if started.batch is None:
        return (
            f"Nothing to predict: {started.tasks} tasks, {started.already_predicted} already predicted, "
            f"{started.no_text} without the text the labeling config needs."
        )
    return (
        f"Batch {started.batch.id}: {started.requests} of {started.tasks} tasks "
        f"({started.already_predicted} already predicted, {started.no_text} without text)."
    )


@admin.action(description="Retrieve predictions for every task (as a batch)")
def retrieve_predictions_action(modeladmin, request, queryset):
    """Admin action on labeling projects: one batch per project, owned by the admin;
    the cluster stores the predictions in Label Studio when each batch completes."""
    for project in queryset.select_related("model"):
        try:
            started = predict_start(project=project, owner=request.user, push_when_done=True)
        except BulkError as exc:
            modeladmin.message_user(request, str(exc), messages.ERROR)
            continue
        note = " Predictions are stored in Label Studio when it completes." if started.batch else ""
        modeladmin.message_user(request, f"{project}: {describe(started)}{note}", messages.SUCCESS)
