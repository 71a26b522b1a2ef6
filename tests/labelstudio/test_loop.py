"""The Label Studio loop against a real Label Studio 1.23.2: a project webhook
pointing at POST /v1/webhooks/label-studio with its secret header; tasks and
annotations created, updated and deleted in Label Studio arrive and apply within
seconds; Label Studio's ground_truth flag is followed; accuracy against that ground
truth through GET /v1/labeling/projects/{id}/accuracy; and a user's batch pushed as
tasks with predictions, labelled, synced and scored.

The stack runs with LABEL_STUDIO_WEBHOOK_SECRETS (tests/conftest.py E2E_ENV)."""

import io
import json
import time

import httpx
import pytest

from .conftest import project_with_backend
from .test_loop_push import LABELS, request
from .test_ml_backend import CLASSIFICATION, REVIEWS

pytestmark = pytest.mark.e2e

SECRET = "e2e-webhook-secret"
HEADER = "X-Webhook-Secret"
APPLY_TIMEOUT = 15.0  # seconds an event may take from Label Studio's call to being applied


def webhook_url(stack):
    return f"{stack.base_url}/webhooks/label-studio"


@pytest.fixture(scope="module")
def api(stack):
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30
    ) as client:
        yield client


def choice(label):
    return [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def ground_truth(api, project_id):
    """{annotation id: annotation} of the project's ground truth, None while the project is unknown."""
    response = api.get(f"/labeling/projects/{project_id}/ground-truth")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return {a["id"]: a for a in response.json()["data"]}


def wait_for(check, what, timeout=APPLY_TIMEOUT):
    """Seconds until check() is true (polled every 0.1 s), at most `timeout`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not applied within {timeout:g} s"
        time.sleep(0.1)
    return time.monotonic() - started


def stored(stack, code):
    """A JSON value computed in the stack's Django (its database, as the web and cluster see it)."""
    out = stack.manage("shell", "-c", f"import json\n{code}")
    return json.loads(out.strip().splitlines()[-1])


def test_webhook_events_arrive_and_apply_within_seconds(stack, ls, api):
    project = ls.create_project("loop webhooks", CLASSIFICATION)
    pid = project["id"]
    ls.create_webhook(pid, webhook_url(stack), headers={HEADER: SECRET})
    # A second webhook with a wrong secret: Label Studio delivers every event to it too,
    # vllm-batch answers 401 and stores nothing.
    ls.create_webhook(pid, webhook_url(stack), headers={HEADER: "not-the-secret"})
    times = {}

    started = time.monotonic()
    task_ids = ls.import_tasks(pid, [{"data": {"text": text}} for text in REVIEWS[:3]])
    times["TASKS_CREATED"] = (
        time.monotonic()
        - started
        + wait_for(lambda: ground_truth(api, pid) == {}, "the project made from TASKS_CREATED")
    )

    started = time.monotonic()
    first = ls.create_annotation(task_ids[0], choice("Positive"), ground_truth=True)
    times["ANNOTATION_CREATED (ground truth)"] = (
        time.monotonic()
        - started
        + wait_for(lambda: first["id"] in (ground_truth(api, pid) or {}), "a ground-truth annotation")
    )
    [listed] = ground_truth(api, pid).values()
    assert listed["task"] == task_ids[0] and listed["result"] == choice("Positive")
    assert listed["ground_truth"] and listed["ls_ground_truth"] and listed["valid"]

    second = ls.create_annotation(task_ids[1], choice("Negative"))
    started = time.monotonic()
    ls.update_annotation(first["id"], result=choice("Negative"))
    times["ANNOTATION_UPDATED (result)"] = (
        time.monotonic()
        - started
        + wait_for(lambda: ground_truth(api, pid)[first["id"]]["result"] == choice("Negative"), "an updated result")
    )

    started = time.monotonic()
    ls.update_annotation(second["id"], ground_truth=True)
    times["ground_truth set in Label Studio"] = (
        time.monotonic()
        - started
        + wait_for(
            lambda: set(ground_truth(api, pid)) == {first["id"], second["id"]}, "Label Studio's ground_truth flag"
        )
    )
    started = time.monotonic()
    ls.update_annotation(first["id"], ground_truth=False)
    times["ground_truth unset in Label Studio"] = (
        time.monotonic()
        - started
        + wait_for(lambda: set(ground_truth(api, pid)) == {second["id"]}, "Label Studio's ground_truth flag cleared")
    )

    started = time.monotonic()
    ls.delete_annotation(second["id"])
    times["ANNOTATIONS_DELETED"] = (
        time.monotonic() - started + wait_for(lambda: ground_truth(api, pid) == {}, "a deleted annotation")
    )

    third = ls.create_annotation(task_ids[2], choice("Neutral"), ground_truth=True)
    wait_for(lambda: set(ground_truth(api, pid)) == {third["id"]}, "a third annotation")
    started = time.monotonic()
    ls.delete_task(task_ids[2])
    times["TASKS_DELETED"] = (
        time.monotonic() - started + wait_for(lambda: ground_truth(api, pid) == {}, "a deleted task's ground truth")
    )

    def title():
        return stored(
            stack,
            f"from labeling.models import LabelingProject\n"
            f"print(json.dumps(LabelingProject.objects.get(ls_project_id={pid}).title))",
        )

    started = time.monotonic()
    ls.request("PATCH", f"/api/projects/{pid}/", json={"title": "loop webhooks renamed"})
    ls.request("PATCH", f"/api/projects/{pid}/", json={"title": "loop webhooks renamed twice"})
    # Each look is a `manage.py shell` (seconds on a busy machine), hence the longer bound.
    times["PROJECT_UPDATED (twice)"] = (
        time.monotonic()
        - started
        + wait_for(lambda: title() == "loop webhooks renamed twice", "a renamed project", timeout=60)
    )

    for action, took in times.items():
        print(f"webhook {action}: applied {took:.2f} s after the Label Studio call")

    rows = stored(
        stack,
        f"""
from labeling.models import Annotation, LabelingTask, WebhookEvent
events = WebhookEvent.objects.filter(ls_project_id={pid})
tasks = LabelingTask.objects.filter(project__ls_project_id={pid})
print(json.dumps({{
    "tasks": {{t.ls_task_id: t.deleted_at is not None for t in tasks}},
    "annotations": {{
        a.ls_annotation_id: [a.result, a.ground_truth, a.ls_ground_truth, a.deleted_at is not None]
        for a in Annotation.objects.filter(project__ls_project_id={pid})
    }},
    "sources": sorted(set(events.values_list("source", flat=True))),
    "statuses": sorted(set(events.values_list("status", flat=True))),
    "bodies": [bytes(b).decode() for b in events.values_list("body", flat=True)],
}}))
""",
    )
    assert rows["tasks"] == {str(task_ids[0]): False, str(task_ids[1]): False, str(task_ids[2]): True}
    annotations = rows["annotations"]
    assert annotations[str(first["id"])] == [choice("Negative"), False, False, False]
    assert annotations[str(second["id"])][3] is True  # deleted
    assert rows["sources"] == ["webhook"]
    assert rows["statuses"] == ["processed"]
    # Each delivery stored once: the wrong-secret webhook's copies were refused.
    assert len(rows["bodies"]) == len(set(rows["bodies"]))
    actions = {json.loads(body)["action"] for body in rows["bodies"]}
    assert {
        "TASKS_CREATED",
        "ANNOTATION_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATIONS_DELETED",
        "TASKS_DELETED",
        "PROJECT_UPDATED",
    } <= actions


def test_a_webhook_without_the_secret_is_refused_and_nothing_is_stored(stack, ls):
    project = ls.create_project("loop wrong secret", CLASSIFICATION)
    ls.create_webhook(project["id"], webhook_url(stack), headers={HEADER: "wrong"})
    ls.import_tasks(project["id"], [{"data": {"text": "no one hears this"}}])
    response = httpx.post(webhook_url(stack), json={"action": "TASKS_CREATED", "project": {"id": project["id"]}})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_webhook_secret"
    count = stored(
        stack,
        f"from labeling.models import WebhookEvent\n"
        f"print(WebhookEvent.objects.filter(ls_project_id={project['id']}).count())",
    )
    assert count == 0


def accuracy(api, project_id, model_version):
    response = api.get(f"/labeling/projects/{project_id}/accuracy", params={"model_version": model_version})
    assert response.status_code == 200, response.text
    return response.json()


def test_accuracy_of_the_backend_predictions_against_ground_truth_from_label_studio(
    tiny_llama_ready, stack, ls, api, backend_url
):
    texts = [{"text": f"{REVIEWS[i % len(REVIEWS)]} ({i})"} for i in range(8)]
    project, task_ids, backend = project_with_backend(ls, backend_url, "loop accuracy", CLASSIFICATION, texts)
    pid = project["id"]
    ls.create_webhook(pid, webhook_url(stack), headers={HEADER: SECRET})
    ls.retrieve_predictions(pid, task_ids)
    predicted = {}
    for task_id in task_ids:
        [prediction] = ls.predictions(task_id)
        predicted[task_id] = prediction["result"][0]["value"]["choices"][0]
        version = prediction["model_version"]
    # Ground truth agrees with the model on 5 tasks of 8 and differs on the other 3.
    truth = {
        task_id: label if i < 5 else next(other for other in LABELS if other != label)
        for i, (task_id, label) in enumerate(predicted.items())
    }
    annotations = {
        task_id: ls.create_annotation(task_id, choice(label), ground_truth=True) for task_id, label in truth.items()
    }
    wait_for(lambda: len(ground_truth(api, pid) or {}) == len(task_ids), "8 ground-truth annotations")

    figures = accuracy(api, pid, version)
    assert (figures["tasks"], figures["predicted"], figures["missing_predictions"]) == (8, 8, 0)
    sentiment = figures["controls"]["sentiment"]
    assert sentiment["accuracy"] == pytest.approx(5 / 8)
    matrix = sentiment["confusion_matrix"]
    index = {label: i for i, label in enumerate(matrix["labels"])}
    expected = [[0] * len(index) for _ in index]
    for task_id in task_ids:
        expected[index[truth[task_id]]][index[predicted[task_id]]] += 1
    assert matrix["matrix"] == expected

    # An annotator corrects one wrong ground truth to the model's answer: accuracy follows.
    wrong = task_ids[5]
    started = time.monotonic()
    ls.update_annotation(annotations[wrong]["id"], result=choice(predicted[wrong]))
    took = (
        time.monotonic()
        - started
        + wait_for(
            lambda: accuracy(api, pid, version)["controls"]["sentiment"]["accuracy"] == pytest.approx(6 / 8),
            "accuracy after an update",
        )
    )
    print(f"accuracy after a Label Studio update: {took:.2f} s from the call")
    # Unmarked in Label Studio: the task leaves the ground truth.
    ls.update_annotation(annotations[task_ids[0]]["id"], ground_truth=False)
    wait_for(lambda: accuracy(api, pid, version)["tasks"] == 7, "a task leaving the ground truth")
    assert accuracy(api, pid, version)["controls"]["sentiment"]["accuracy"] == pytest.approx(5 / 7)


def test_a_pushed_batch_is_labelled_synced_and_scored(tiny_llama_ready, may_push, stack, client, ls, api, backend_url):
    project = ls.create_project("loop batch to accuracy", CLASSIFICATION)
    pid = project["id"]
    ls.connect_ml_backend(pid, backend_url, "vllm-batch")
    ls.create_webhook(pid, webhook_url(stack), headers={HEADER: SECRET})
    lines = [request(f"r{i}", f"{REVIEWS[i % len(REVIEWS)]} [{i}]", True) for i in range(10)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file = client.files.create(file=("loop.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"labelstudio_project": str(pid)},
    )
    deadline = time.monotonic() + 300
    while len(tasks := list(ls.tasks(pid, with_predictions=True))) < 10:
        assert time.monotonic() < deadline, f"batch {batch.id}: {len(tasks)}/10 tasks pushed after 300 s"
        time.sleep(1)
    version = f"tiny-llama@{batch.id}"
    answers = {}
    for task in tasks:
        [prediction] = task["predictions"]
        assert prediction["model_version"] == version
        answers[task["id"]] = prediction["result"][0]["value"]["choices"][0]
    # Every pushed prediction is confirmed by an annotator but the first two.
    for i, (task_id, label) in enumerate(sorted(answers.items())):
        truth = label if i >= 2 else next(other for other in LABELS if other != label)
        ls.create_annotation(task_id, choice(truth), ground_truth=True)
    wait_for(lambda: len(ground_truth(api, pid) or {}) == 10, "10 ground-truth annotations")
    # Predictions made outside /predict reach the store through sync.
    out = stack.manage("labelstudio", "sync", str(pid))
    assert "10 predictions" in out
    figures = accuracy(api, pid, version)
    assert (figures["tasks"], figures["predicted"]) == (10, 10)
    assert figures["controls"]["sentiment"]["accuracy"] == pytest.approx(0.8)
