"""The Label Studio ML backend (/labelstudio) against the real engine: every
prediction valid for its labeling config, all tasks of a /predict at once."""

import json
import time

import httpx
import pytest

from .conftest import chat_request, submit, wait_finished

pytestmark = pytest.mark.e2e

CHOICES = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="Positive"/><Choice value="Negative"/><Choice value="Neutral"/></Choices></View>'
)
NER = (
    '<View><Labels name="label" toName="text"><Label value="PER"/><Label value="ORG"/><Label value="LOC"/>'
    '</Labels><Text name="text" value="$text"/></View>'
)
# Label Studio's "candidate evaluation" shape: several questions about one text.
MULTI = """<View>
  <Header value="Review the answer"/>
  <Text name="answer" value="$answer"/>
  <Choices name="correct" toName="answer" choice="single-radio">
    <Choice value="Correct"/><Choice value="Partly correct"/><Choice value="Wrong"/>
  </Choices>
  <Choices name="issues" toName="answer" choice="multiple">
    <Choice value="Too long"/><Choice value="Off topic"/><Choice value="Rude"/>
  </Choices>
  <Rating name="quality" toName="answer" maxRating="5"/>
  <Number name="stars" toName="answer" min="0" max="10"/>
  <TextArea name="comment" toName="answer"/>
  <Choices name="followup" toName="answer" visibleWhen="choice-selected" whenTagName="correct">
    <Choice value="Yes"/>
  </Choices>
</View>"""
TEXTS = [
    "Barack Obama visited Microsoft in Seattle.",
    "Angela Merkel met Siemens executives in Berlin and Berlin again.",
    "Paris is lovely in spring. 😀 Café Zürich opens at nine.",
    "It arrived on Tuesday.",
]


IDLE_LLAMA_ID = "from workers.models import RegisteredModel; print(RegisteredModel.objects.get(name='idle-llama').id)"


def root(stack):
    return stack.base_url.removesuffix("/v1") + "/labelstudio"


def call(stack, path, body=None, timeout=120):
    if body is None:
        return httpx.get(f"{root(stack)}{path}", timeout=timeout)
    return httpx.post(f"{root(stack)}{path}", json=body, timeout=timeout)


def tasks_for(texts, key="text", first_id=1):
    return [
        {"id": first_id + i, "data": {key: text}, "annotations": [], "predictions": []} for i, text in enumerate(texts)
    ]


def update_project(stack, project, **fields):
    """Changes a LabelingProject as the admin would."""
    stack.manage(
        "shell",
        "-c",
        "from labeling.models import LabelingProject; "
        f"p = LabelingProject.objects.get(ls_project={project!r}); "
        + "".join(f"p.{name} = {value!r}; " for name, value in fields.items())
        + "p.save()",
    )


def predict(stack, project, config, tasks, **fields):
    setup = {"project": project, "schema": config, "hostname": "http://ls", "access_token": "t"}
    assert call(stack, "/setup", setup).status_code == 200
    if fields:
        update_project(stack, project, **fields)
    started = time.monotonic()
    response = call(stack, "/predict", {"tasks": tasks, "project": project, "label_config": config, "params": {}})
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(tasks)
    for entry in results:
        assert entry["model_version"].startswith("tiny-llama@")
        assert entry["score"] is None or 0 <= entry["score"] <= 1
    return results, elapsed


@pytest.fixture(scope="module", autouse=True)
def tiny_llama_loaded(stack, client):
    """The worker loads tiny-llama for its first batch; predictions work once its heartbeat says so."""
    batch = submit(client, [chat_request("warm", "hi", max_tokens=2)])
    assert wait_finished(client, batch.id).status == "completed"
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    deadline = time.monotonic() + 60
    while (
        httpx.post(
            f"{stack.base_url}/inference", json={"prompt": "hi", "max_tokens": 1}, headers=headers, timeout=60
        ).status_code
        != 200
    ):
        assert time.monotonic() < deadline, "no worker announced tiny-llama for realtime"
        time.sleep(0.5)


def test_health_is_fast(stack):
    started = time.monotonic()
    response = call(stack, "/health")
    assert response.status_code == 200
    assert response.json()["status"] == "UP"
    assert time.monotonic() - started < 1


def test_choices_predictions_are_one_allowed_label_each(stack):
    results, _ = predict(stack, "101.1700000000", CHOICES, tasks_for(TEXTS))
    for entry in results:
        assert len(entry["result"]) == 1
        item = entry["result"][0]
        assert (item["from_name"], item["to_name"], item["type"]) == ("sentiment", "text", "choices")
        assert len(item["value"]["choices"]) == 1
        assert item["value"]["choices"][0] in ("Positive", "Negative", "Neutral")
        assert 0 <= entry["score"] <= 1


def test_ner_spans_have_consistent_offsets(stack):
    tasks = tasks_for(TEXTS * 2)
    # Greedy random weights close the list at once; sampling gives spans to check.
    results, _ = predict(stack, "102.1700000000", NER, tasks, temperature=1.0, seed=1)
    # Span texts are guided to the text's own words, so every span is placed.
    assert sum(len(entry["result"]) for entry in results) > 0
    for task, entry in zip(tasks, results, strict=True):
        text = task["data"]["text"]
        seen = set()
        for item in entry["result"]:
            value = item["value"]
            assert item["type"] == "labels" and item["from_name"] == "label" and item["to_name"] == "text"
            assert value["labels"][0] in ("PER", "ORG", "LOC") and len(value["labels"]) == 1
            assert 0 <= value["start"] < value["end"] <= len(text)
            assert text[value["start"] : value["end"]] == value["text"]
            assert (value["start"], value["end"], value["labels"][0]) not in seen
            seen.add((value["start"], value["end"], value["labels"][0]))
            assert 0 <= item["score"] <= 1
        print(task["id"], [(i["value"]["text"], i["value"]["labels"]) for i in entry["result"]])


def test_multi_control_predictions_are_valid_for_every_control(stack):
    tasks = tasks_for(TEXTS, key="answer")
    results, _ = predict(stack, "103.1700000000", MULTI, tasks)
    for entry in results:
        by_name = {item["from_name"]: item for item in entry["result"]}
        assert "followup" not in by_name  # shown only conditionally: left out
        for item in entry["result"]:
            assert item["to_name"] == "answer"
        if "correct" in by_name:
            assert by_name["correct"]["value"]["choices"][0] in ("Correct", "Partly correct", "Wrong")
        if "issues" in by_name:
            chosen = by_name["issues"]["value"]["choices"]
            assert chosen and set(chosen) <= {"Too long", "Off topic", "Rude"} and len(set(chosen)) == len(chosen)
        if "quality" in by_name:
            assert by_name["quality"]["value"]["rating"] in range(1, 6)
        if "stars" in by_name:
            assert 0 <= by_name["stars"]["value"]["number"] <= 10
        if "comment" in by_name:
            assert isinstance(by_name["comment"]["value"]["text"][0], str)
        print(json.dumps(entry))
    # The random-weight model still answers most tasks completely through guided decoding.
    assert sum(len(e["result"]) == 5 for e in results) >= len(results) // 2


def test_a_hundred_tasks_in_one_predict_answer_well_inside_label_studios_timeout(stack):
    texts = [f"Review number {i}: the product was {'great' if i % 2 else 'disappointing'}." for i in range(100)]
    results, elapsed = predict(stack, "104.1700000000", CHOICES, tasks_for(texts))
    print(f"/predict of 100 tasks (Choices, tiny-llama, CPU): {elapsed:.2f} s")
    assert elapsed < 30
    assert all(len(e["result"]) == 1 for e in results)


def test_a_hundred_multi_control_tasks_answer_inside_label_studios_timeout(stack):
    # The longest answers: five controls and a free-text comment per task.
    texts = [f"Answer {i}: restart the router, then call support if it still fails." for i in range(100)]
    results, elapsed = predict(stack, "106.1700000000", MULTI, tasks_for(texts, key="answer"))
    print(f"/predict of 100 tasks (5 controls, tiny-llama, CPU): {elapsed:.2f} s")
    assert elapsed < 90
    assert all(e["result"] for e in results)


def test_no_worker_holding_the_model_is_a_quick_503_with_the_reason(stack, tiny_model_path):
    stack.manage("register_model", "idle-llama", str(tiny_model_path))
    assert call(stack, "/setup", {"project": "105.1700000000", "schema": CHOICES}).status_code == 200
    update_project(stack, "105.1700000000", model_id=int(stack.manage("shell", "-c", IDLE_LLAMA_ID).split()[-1]))
    started = time.monotonic()
    response = call(
        stack, "/predict", {"tasks": tasks_for(TEXTS), "project": "105.1700000000", "label_config": CHOICES}
    )
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert "idle-llama" in response.json()["error"]
    assert response.json()["code"] == "model_not_loaded"
