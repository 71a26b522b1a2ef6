"""A finished batch's outputs pushed to a Label Studio project as tasks with predictions.

A user's own chat or completions batch whose `metadata` names a Label Studio
project (`labelstudio_project`: its id, optionally `labelstudio_data_key`: the task
data key the text goes under) is pushed when it completes: each request becomes a
task holding the request's text (the last user message, or the prompt), and the
request's output becomes the task's prediction when it is a valid answer for the
project's labeling config, parsed as /predict parses answers. An output that is not
(free text that names no label, say) leaves the task without a prediction and is
counted as invalid: a label is never made up.

Bulk predictions (labeling.bulk) also carry `labelstudio_project`, together with
`labelstudio_model_version`: their tasks already exist in Label Studio, so those
batches go to `bulk.predict_push` instead.

No table records what was pushed: every task carries {"vllm_batch": batch id,
"custom_id": ...} in its Label Studio `meta`, and a push skips the requests whose task
is already there, so pushing the same batch again (after a failure half-way, from
the admin or the command line) never duplicates a task.

The push runs once the batch has finished: jobs sends `jobs.signals.batch_finished`
and labeling.tasks.batch_finished queues `push_task`.
"""

import logging
from dataclasses import dataclass, field

from django.contrib import admin, messages
from django.db import transaction

from batchsite.errors import ApiError
from jobs.models import Batch

from . import bulk
from . import predictions as P
from .client import LabelStudioError
from .label_config import LabelConfigError, parse_label_config

logger = logging.getLogger(__name__)

META_PROJECT = bulk.META_PROJECT
META_DATA_KEY = "labelstudio_data_key"
TASK_META_BATCH = "vllm_batch"
TASK_META_ID = "custom_id"
ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
TASKS_PER_IMPORT = 500
MAX_ERRORS = 5


class PushError(Exception):
    """Why a batch cannot be pushed, in words for the admin and the command line."""


@dataclass
class PushReport:
    batch_id: str
    project_id: int
    model_version: str = ""
    tasks: int = 0  # tasks created in Label Studio by this push
    predictions: int = 0  # of them, with a prediction
    invalid: int = 0  # the output is not a valid answer for the config: task without a prediction
    failed: int = 0  # the request failed or never ran: task without a prediction
    already: int = 0  # requests whose task an earlier push created
    no_text: int = 0  # requests without a user message or prompt: no task
    errors: list = field(default_factory=list)  # the first few reasons

    def __str__(self):
        return (
            f"{self.batch_id} -> Label Studio project {self.project_id}: {self.tasks} tasks created, "
            f"{self.predictions} with a prediction ({self.model_version}), {self.invalid} invalid outputs, "
            f"{self.failed} failed requests, {self.already} already pushed, {self.no_text} without text"
        )

    def note(self, custom_id, reason):
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(f"{custom_id}: {reason}")


def is_user_push(batch):
    """A user's batch that names a Label Studio project (not a bulk prediction)."""
    metadata = batch.metadata or {}
    return bool(metadata.get(META_PROJECT)) and bulk.META_VERSION not in metadata


# Requests and outputs ------------------------------------------------------


def _content_text(content):
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str)) or None
    return None


def request_text(body):
    """The text a request asks about: the last user message of a chat request, the
    prompt of a completions request (its first one when a list); None when it has none."""
    if not isinstance(body, dict):
        return None
    messages_ = body.get("messages")
    if isinstance(messages_, list):
        for message in reversed(messages_):
            if isinstance(message, dict) and message.get("role") == "user":
                text = _content_text(message.get("content"))
                return text if text and text.strip() else None
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) and prompt.strip() else None


def output_generation(line):
    """(text, [(token, logprob)], error) from one output or error file line, for the
    chat and the completions response shapes."""
    response = line.get("response") or {}
    body = response.get("body") or {}
    if line.get("error") or response.get("status_code") != 200 or not body.get("choices"):
        error = line.get("error") or body.get("error") or {}
        return None, [], (error.get("message") if isinstance(error, dict) else str(error)) or "the request failed"
    choice = body["choices"][0]
    logprobs = choice.get("logprobs") or {}
    if "message" in choice:
        pairs = [(e["token"], e["logprob"]) for e in logprobs.get("content") or []]
        return choice["message"].get("content"), pairs, None
    pairs = list(zip(logprobs.get("tokens") or [], logprobs.get("token_logprobs") or [], strict=False))
    return choice.get("text"), pairs, None


def _outputs(batch):
    """{custom_id: (text, token_logprobs, error)} from the batch's output and error files."""
    outputs = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        for line in bulk._read_lines(file_id):
            outputs[str(line.get("custom_id", ""))] = output_generation(line)
    return outputs


def _requests(batch):
    """(custom_id, body) of every line of the batch's input file, in order."""
    for line in bulk._read_lines(batch.input_file_id):
        yield str(line.get("custom_id", "")), line.get("body")


# The push ------------------------------------------------------------------


def _data_key(config, wanted):
    variables = config.variables
    if not variables:
        raise PushError("The project's labeling config has no text object whose value is a task data variable ($text).")
    if wanted is None:
        return variables[0]
    if wanted not in variables:
        names = ", ".join(variables)
        raise PushError(f"{META_DATA_KEY} {wanted!r} is not a variable of the labeling config ({names}).")
    return wanted


def _pushed_ids(client, project_id, batch_id):
    done = set()
    for task in client.tasks(project_id):
        meta = task.get("meta") or {}
        if isinstance(meta, dict) and meta.get(TASK_META_BATCH) == batch_id:
            done.add(str(meta.get(TASK_META_ID)))
    return done


def push_batch(*, batch, project=None, data_key=None, client=None):
    """Creates a task per request of the finished `batch` in the Label Studio project
    (`project`: a Label Studio project id or key; default the batch's metadata), with
    a prediction where the output is valid for the project's config. Requests an
    earlier push created are skipped. Returns a PushReport; PushError when the batch
    or the project cannot be used."""
    metadata = batch.metadata or {}
    reference = project if project is not None else metadata.get(META_PROJECT)
    if not reference:
        raise PushError(f"Batch {batch.id} names no Label Studio project: give one or set its {META_PROJECT} metadata.")
    if batch.endpoint not in ENDPOINTS:
        raise PushError(f"Batch {batch.id} runs {batch.endpoint}; only chat and completions batches can be pushed.")
    if batch.status in Batch.ACTIVE:
        raise PushError(f"Batch {batch.id} is still {batch.status}.")
    if batch.status == Batch.Status.FAILED:
        raise PushError(f"Batch {batch.id} failed before it ran; it has no outputs to push.")
    data_key = data_key or metadata.get(META_DATA_KEY)
    try:
        labeling_project = bulk.find_project(reference)
    except bulk.BulkError as exc:
        raise PushError(str(exc)) from None
    except ApiError:
        raise PushError(f'{reference!r} is not a Label Studio project id or key "<id>.<created_at>".') from None
    owned = client is None
    try:
        client = client or bulk.label_studio_for(labeling_project)
    except bulk.BulkError as exc:
        raise PushError(str(exc)) from None
    project_id = labeling_project.ls_project_id
    try:
        # Lock the batch row: two pushes of one batch at once would both find its tasks missing.
        with transaction.atomic():
            Batch.objects.select_for_update().filter(pk=batch.pk).first()
            return _push(batch, project_id, data_key, client)
    except LabelStudioError as exc:
        raise PushError(f"Batch {batch.id}: pushing to Label Studio project {project_id} failed: {exc}") from None
    finally:
        if owned:
            client.close()


def _push(batch, project_id, data_key, client):
    try:
        config = parse_label_config(client.project(project_id)["label_config"])
    except LabelConfigError as exc:
        raise PushError(f"Label Studio project {project_id}: its labeling config cannot be used: {exc}") from None
    data_key = _data_key(config, data_key)
    report = PushReport(batch_id=batch.id, project_id=project_id)
    done = _pushed_ids(client, project_id, batch.id)
    outputs = _outputs(batch)
    tasks = []
    for custom_id, body in _requests(batch):
        if custom_id in done:
            report.already += 1
            continue
        text = request_text(body)
        if text is None:
            report.no_text += 1
            report.note(custom_id, "the request has no user message or prompt")
            continue
        model = body.get("model", "")
        report.model_version = report.model_version or f"{model}@{batch.id}"
        task = {"data": {data_key: text}, "meta": {TASK_META_BATCH: batch.id, TASK_META_ID: custom_id}}
        generated, token_logprobs, error = outputs.get(custom_id) or (None, [], "the request never ran")
        if error:
            report.failed += 1
            report.note(custom_id, error)
        else:
            prediction = P.result_from(config, {"id": custom_id, "data": task["data"]}, generated, token_logprobs)
            if prediction.error:
                report.invalid += 1
                report.note(custom_id, prediction.error)
            else:
                task["predictions"] = [prediction.entry(f"{model}@{batch.id}")]
                report.predictions += 1
        tasks.append(task)
    for start in range(0, len(tasks), TASKS_PER_IMPORT):
        report.tasks += len(client.import_tasks(project_id, tasks[start : start + TASKS_PER_IMPORT]))
    logger.info("%s", report)
    for error in report.errors:
        logger.warning("batch %s to Label Studio project %s, %s", batch.id, project_id, error)
    return report


def push_any(*, batch, project=None):
    """What the admin action and push_task do with a batch: a bulk prediction's
    results stored on its tasks, a user's batch pushed as new tasks. Returns the report."""
    if project is None and not is_user_push(batch) and (batch.metadata or {}).get(META_PROJECT):
        try:
            return bulk.predict_push(batch=batch)
        except bulk.BulkError as exc:
            raise PushError(str(exc)) from None
    return push_batch(batch=batch, project=project)


# Automatic push when a user's batch finishes --------------------------------


def push_task(batch_id):
    """django-q entry point, queued by labeling.tasks.batch_finished once the batch
    has finished: pushes it (a user's batch as tasks, a bulk prediction's results)."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None:
        return "batch deleted"
    try:
        return str(push_any(batch=batch))
    except PushError as exc:
        logger.error("%s", exc)
        return str(exc)


# Admin action on batches ------------------------------------------------------


@admin.action(description="Push to Label Studio (the project in the batch's metadata)")
def push_batches_action(modeladmin, request, queryset):
    """Finished batches are pushed now. A running one is pushed by the cluster when
    it finishes if it was marked for that at creation (a user's batch naming a
    project, a bulk prediction started to push when done); any other is refused."""
    for batch in queryset:
        if not (batch.metadata or {}).get(META_PROJECT):
            modeladmin.message_user(
                request,
                f"{batch.id}: no {META_PROJECT} in its metadata; push it with "
                f"`manage.py labelstudio push-batch {batch.id} PROJECT`.",
                messages.ERROR,
            )
            continue
        if batch.status in Batch.ACTIVE:
            pushed_when_done = is_user_push(batch) or bulk.pushes_when_done(batch)
            if pushed_when_done and bulk.may_write_to_label_studio(batch.owner):
                modeladmin.message_user(
                    request, f"{batch.id} is {batch.status}: pushed when it finishes.", messages.INFO
                )
            else:
                modeladmin.message_user(
                    request,
                    f"{batch.id} is {batch.status}: not finished yet; run it again when it completes.",
                    messages.WARNING,
                )
            continue
        try:
            report = push_any(batch=batch)
        except PushError as exc:
            modeladmin.message_user(request, str(exc), messages.ERROR)
            continue
        modeladmin.message_user(request, str(report), messages.SUCCESS)
