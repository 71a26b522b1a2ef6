"""A user's batch naming a Label Studio project in its metadata: when it completes,
the worker cluster pushes it to the real Label Studio (strict prediction validation
on) as one task per request, with the output as the prediction when it is a valid
answer for the labeling config, and a second push adds nothing."""

import io
import json
import time

import pytest

from .test_ml_backend import CLASSIFICATION, REVIEWS, check_choices

pytestmark = pytest.mark.e2e

LABELS = ["Positive", "Negative", "Neutral"]
GUIDED = 40
FREE = 3


def request(custom_id, text, guided):
    body = {
        "model": "tiny-llama",
        "messages": [
            {"role": "system", "content": "Classify the sentiment of the review."},
            {"role": "user", "content": text},
        ],
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 1,
    }
    if guided:
        body["guided_choice"] = LABELS
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def pushed_tasks(ls, project_id):
    return [t for t in ls.tasks(project_id, with_predictions=True) if (t.get("meta") or {}).get("vllm_batch")]


def test_a_finished_batch_is_pushed_as_tasks_with_valid_predictions(
    tiny_llama_ready, may_push, stack, client, ls, backend_url
):
    project = ls.create_project("push a batch", CLASSIFICATION)
    # Connecting the model is how vllm-batch learns Label Studio's URL and token (/setup).
    ls.connect_ml_backend(project["id"], backend_url, "vllm-batch")
    texts = {f"g{i}": f"{REVIEWS[i % len(REVIEWS)]} (guided {i})" for i in range(GUIDED)}
    free = {f"f{i}": f"{REVIEWS[i]} (free {i})" for i in range(FREE)}
    lines = [request(cid, text, True) for cid, text in texts.items()]
    lines += [request(cid, text, False) for cid, text in free.items()]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file = client.files.create(file=("push.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"labelstudio_project": str(project["id"])},
    )
    deadline = time.monotonic() + 300
    while (batch := client.batches.retrieve(batch.id)).status != "completed":
        assert batch.status not in ("failed", "cancelled", "expired"), batch
        assert time.monotonic() < deadline, f"batch {batch.id} is still {batch.status}"
        time.sleep(0.5)
    completed = time.monotonic()
    deadline = completed + 120
    while len(tasks := pushed_tasks(ls, project["id"])) < len(lines):
        assert time.monotonic() < deadline, f"{len(tasks)}/{len(lines)} tasks in Label Studio 120 s after completion"
        time.sleep(1)
    print(f"push of {len(lines)} tasks: in Label Studio {time.monotonic() - completed:.1f} s after the batch completed")

    by_id = {t["meta"]["custom_id"]: t for t in tasks}
    assert sorted(by_id) == sorted([*texts, *free])
    for cid, text in texts.items():
        task = by_id[cid]
        assert task["data"] == {"text": text}
        assert task["meta"]["vllm_batch"] == batch.id
        [prediction] = task["predictions"]
        [item] = prediction["result"]
        check_choices(item, "sentiment", LABELS)
        assert item["to_name"] == "text"
        assert 0 < prediction["score"] <= 1
        assert prediction["model_version"] == f"tiny-llama@{batch.id}"
    # Free text from the tiny model is no label: those tasks carry no prediction rather than a made-up one.
    for cid in free:
        for prediction in by_id[cid]["predictions"]:
            [item] = prediction["result"]
            check_choices(item, "sentiment", LABELS)

    started = time.monotonic()
    out = stack.manage("labelstudio", "push-batch", batch.id)
    print(f"second push of {len(lines)} requests (nothing to add): {time.monotonic() - started:.1f} s")
    assert "0 tasks created" in out and f"{len(lines)} already pushed" in out
    assert len(list(ls.tasks(project["id"]))) == len(lines)


def test_push_batch_command_to_a_second_project_and_its_errors(tiny_llama_ready, stack, client, ls, backend_url):
    project = ls.create_project("push by command", CLASSIFICATION)
    ls.connect_ml_backend(project["id"], backend_url, "vllm-batch")
    lines = [request(f"r{i}", REVIEWS[i], True) for i in range(5)]
    for line in lines:  # without logprobs: the predictions have no score
        del line["body"]["logprobs"], line["body"]["top_logprobs"]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file = client.files.create(file=("cmd.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 300
    while client.batches.retrieve(batch.id).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    out = stack.manage("labelstudio", "push-batch", batch.id, str(project["id"]))
    assert "5 tasks created, 5 with a prediction" in out
    stored = list(ls.tasks(project["id"], with_predictions=True))
    assert sorted(t["meta"]["custom_id"] for t in stored) == [f"r{i}" for i in range(5)]
    for task in stored:
        [prediction] = task["predictions"]
        check_choices(prediction["result"][0], "sentiment", LABELS)
        assert prediction["score"] is None
    with pytest.raises(RuntimeError, match="names no Label Studio project"):
        stack.manage("labelstudio", "push-batch", batch.id)
    with pytest.raises(RuntimeError, match="No labeling project for Label Studio project 99999"):
        stack.manage("labelstudio", "push-batch", batch.id, "99999")
