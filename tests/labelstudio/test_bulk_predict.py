"""`manage.py labelstudio predict`: a whole Label Studio project predicted through a
vllm-batch batch, its results stored in the real Label Studio as predictions."""

import time

import pytest

from .conftest import project_with_backend
from .test_ml_backend import ANSWERS, CLASSIFICATION, EVALUATION, REVIEWS, check_choices

pytestmark = pytest.mark.e2e

LABELS = ["Positive", "Negative", "Neutral"]


def texts(count):
    return [{"text": f"{REVIEWS[i % len(REVIEWS)]} (review {i})"} for i in range(count)]


def predictions_by_task(ls, project_id):
    return {task["id"]: task["predictions"] for task in ls.tasks(project_id, with_predictions=True)}


def test_predict_200_tasks_through_a_batch_and_wait(tiny_llama_ready, stack, ls, backend_url):
    project, task_ids, backend = project_with_backend(ls, backend_url, "bulk 200", CLASSIFICATION, texts(200))
    started = time.monotonic()
    out = stack.manage("labelstudio", "predict", str(project["id"]), "--wait", "--timeout", "600", timeout=900)
    print(f"bulk predict, 200 tasks through a batch: {time.monotonic() - started:.1f} s")
    assert "200 of 200 tasks" in out
    assert "200 predictions stored in Label Studio" in out
    stored = predictions_by_task(ls, project["id"])
    assert sorted(stored) == sorted(task_ids)
    versions = set()
    for task_id, predictions in stored.items():
        assert len(predictions) == 1, f"task {task_id} has {len(predictions)} predictions"
        [item] = predictions[0]["result"]
        check_choices(item, "sentiment", LABELS)
        assert 0 <= predictions[0]["score"] <= 1
        versions.add(predictions[0]["model_version"])
    [version] = versions
    assert version == ls.ml_backends(project["id"])[0]["model_version"]

    again = stack.manage("labelstudio", "predict", str(project["id"]), "--wait", "--timeout", "600", timeout=900)
    assert "Nothing to predict: 200 tasks, 200 already predicted" in again
    assert all(len(p) == 1 for p in predictions_by_task(ls, project["id"]).values())


def test_predict_without_waiting_leaves_the_push_to_the_cluster(tiny_llama_ready, stack, ls, backend_url):
    project, task_ids, _ = project_with_backend(ls, backend_url, "bulk handed over", CLASSIFICATION, texts(30))
    out = stack.manage("labelstudio", "predict", str(project["id"]))
    assert "30 of 30 tasks" in out and "worker cluster stores the predictions" in out
    deadline = time.monotonic() + 300
    while True:
        stored = predictions_by_task(ls, project["id"])
        if all(stored.get(task_id) for task_id in task_ids):
            break
        assert time.monotonic() < deadline, f"{sum(map(bool, stored.values()))}/30 tasks have a prediction after 300 s"
        time.sleep(1)
    for predictions in stored.values():
        [item] = predictions[0]["result"]
        check_choices(item, "sentiment", LABELS)


def test_predict_several_controls_through_a_batch(tiny_llama_ready, stack, ls, backend_url):
    tasks = [{"question": a["question"], "answer": f"{a['answer']} ({i})"} for i, a in enumerate(ANSWERS * 7)]
    project, task_ids, _ = project_with_backend(ls, backend_url, "bulk evaluation", EVALUATION, tasks)
    out = stack.manage("labelstudio", "predict", str(project["id"]), "--wait", "--timeout", "600", timeout=900)
    assert f"{len(tasks)} predictions stored in Label Studio" in out
    for task_id, predictions in predictions_by_task(ls, project["id"]).items():
        assert len(predictions) == 1, f"task {task_id} has {len(predictions)} predictions"
        items = {item["from_name"]: item for item in predictions[0]["result"]}
        assert set(items) == {"relevance", "issues", "quality"}
        check_choices(items["relevance"], "relevance", ["Relevant", "Irrelevant"])
        check_choices(items["issues"], "issues", ["Factual error", "Rude", "Too long"], multiple=True)
        assert items["quality"]["value"]["rating"] in range(1, 6)
        assert 0 <= predictions[0]["score"] <= 1


def test_predict_for_an_unknown_project_fails_clearly(tiny_llama_ready, stack):
    with pytest.raises(RuntimeError, match="No labeling project for Label Studio project 99999"):
        stack.manage("labelstudio", "predict", "99999")
