"""Pre-annotation that learns from ground truth, on the real stack with ONE worker:
the embedding predictor and few-shot prompts with real all-MiniLM-L6-v2 vectors,
the worker swapping between tiny-llama and the embedding model on demand (a web
with VLLM_BATCH_REALTIME_SWAP=1), zero-shot when no worker holds the embedding
model, and `manage.py labelstudio compare`.

tiny-llama has random weights: its answers prove the plumbing, not accuracy. The
embedding predictor's accuracy is real (real vectors, hand-labelled texts)."""

import json
import time

import httpx
import pytest

from devtools.devstack import Stack

from .conftest import chat_request, submit, wait_finished

pytestmark = pytest.mark.e2e

CHOICES = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="Positive"/><Choice value="Negative"/><Choice value="Neutral"/></Choices></View>'
)
THINGS = ["phone", "laptop", "hotel room", "pizza", "movie", "concert", "jacket", "coffee", "train ride", "novel"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Friday"]
PHRASES = {
    "Positive": [
        "I absolutely love this {thing}, it is wonderful and made my day.",
        "What a fantastic {thing}! I am so happy with it.",
    ],
    "Negative": [
        "This {thing} is terrible, I hate it and want my money back.",
        "Awful {thing}. The worst I have ever had, very disappointed.",
    ],
    "Neutral": [
        "The {thing} was delivered on {day} at nine o'clock.",
        "The {thing} is listed for {day} in the schedule.",
    ],
}


def labelled(things, first_id):
    """(task id, text, label): both phrasings of each label for each thing."""
    rows = []
    for i, thing in enumerate(things):
        for label, phrases in PHRASES.items():
            for phrase in phrases:
                rows.append((first_id + len(rows), phrase.format(thing=thing, day=DAYS[i]), label))
    return rows


GROUND_TRUTH = labelled(THINGS[:7], 1)  # 42 examples
HELD_OUT = labelled(THINGS[7:], 500)  # 18 tasks, things never seen in the ground truth
PROJECT = "301.1700000000"

ADD_GROUND_TRUTH = """
import json
from django.db.models import F
from django.utils import timezone
from labeling.models import Annotation, LabelingProject, LabelingTask
project = LabelingProject.objects.get(ls_project={project!r})
for task_id, text, label in json.loads({rows!r}):
    task = LabelingTask.objects.create(project=project, ls_task_id=task_id, data={{"text": text}})
    result = [{{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {{"choices": [label]}}}}]
    Annotation.objects.create(project=project, task=task, ls_annotation_id=task_id, result=result,
                              ground_truth=True, ground_truth_at=timezone.now())
LabelingProject.objects.filter(pk=project.pk).update(ground_truth_revision=F("ground_truth_revision") + 1)
"""


def backend(base_url):
    return base_url.removesuffix("/v1") + "/labelstudio"


def update_project(stack, **fields):
    stack.manage(
        "shell",
        "-c",
        "from labeling.models import LabelingProject; "
        f"p = LabelingProject.objects.get(ls_project={PROJECT!r}); "
        + "".join(f"p.{name} = {value!r}; " for name, value in fields.items())
        + "p.save()",
    )


def predict(base_url, rows, timeout=300):
    tasks = [{"id": task_id, "data": {"text": text}} for task_id, text, _ in rows]
    started = time.monotonic()
    response = httpx.post(
        f"{backend(base_url)}/predict",
        json={"project": PROJECT, "label_config": CHOICES, "tasks": tasks},
        timeout=timeout,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["results"]) == len(rows)
    for entry in body["results"]:
        (item,) = entry["result"]
        assert (item["from_name"], item["to_name"], item["type"]) == ("sentiment", "text", "choices")
        assert item["value"]["choices"][0] in PHRASES
        assert 0 <= entry["score"] <= 1 and entry["model_version"] == body["model_version"]
    return body, time.monotonic() - started


def labels(body):
    return [entry["result"][0]["value"]["choices"][0] for entry in body["results"]]


def realtime_holds(stack, model):
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    body = {"model": model, "input": "x"} if "MiniLM" in model else {"model": model, "prompt": "x", "max_tokens": 1}
    path = "/embeddings" if "MiniLM" in model else "/inference"
    return httpx.post(f"{stack.base_url}{path}", json=body, headers=headers, timeout=60).status_code == 200


def wait_holds(stack, model, timeout=120):
    deadline = time.monotonic() + timeout
    while not realtime_holds(stack, model):
        assert time.monotonic() < deadline, f"no worker announced {model}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def project(stack, client):
    """tiny-llama loaded (a batch loads it), the project connected, 42 ground-truth annotations."""
    batch = submit(client, [chat_request("warm", "hi", max_tokens=2)])
    assert wait_finished(client, batch.id).status == "completed"
    wait_holds(stack, "tiny-llama")
    setup = {"project": PROJECT, "schema": CHOICES, "hostname": "http://ls", "access_token": "t"}
    assert httpx.post(f"{backend(stack.base_url)}/setup", json=setup, timeout=60).status_code == 200
    stack.manage("shell", "-c", ADD_GROUND_TRUTH.format(project=PROJECT, rows=json.dumps(GROUND_TRUTH)))
    yield PROJECT
    # Leave the worker as the other modules expect it: holding tiny-llama.
    batch = submit(client, [chat_request("back", "hi", max_tokens=2)])
    assert wait_finished(client, batch.id, timeout=300).status == "completed"


@pytest.fixture(scope="module")
def swapping_web(stack):
    """A second web on the same database whose operator allows on-demand swaps, and
    gives /predict time for one (a model load on CPU)."""
    web = Stack(
        stack.var_dir,
        env={**stack.env, "VLLM_BATCH_REALTIME_SWAP": "1", "LABEL_STUDIO_PREDICT_TIMEOUT": "240"},
        log_prefix="learning-swap-",
    )
    web.start_web()
    yield web
    web.stop()


def test_few_shot_without_an_embedding_worker_predicts_zero_shot(stack, project):
    update_project(stack, few_shot_k=3)
    body, _ = predict(stack.base_url, HELD_OUT[:4])
    assert body["model_version"].startswith("tiny-llama@")
    log = (stack.var_dir / "logs" / "web.log").read_text(errors="replace")
    assert "few-shot examples unavailable, predicting zero-shot" in log and "model_not_loaded" in log


def test_the_embedding_predictor_learns_the_ground_truth_through_a_swap(stack, project, swapping_web):
    update_project(stack, predictor="embedding", few_shot_k=0)
    body, elapsed = predict(swapping_web.base_url, HELD_OUT)
    print(f"/predict of {len(HELD_OUT)} tasks, embedding predictor, swap to all-MiniLM-L6-v2 included: {elapsed:.1f} s")
    assert body["model_version"].startswith("all-MiniLM-L6-v2@blend@")
    correct = sum(p == label for p, (_, _, label) in zip(labels(body), HELD_OUT, strict=True))
    print(f"embedding predictor on held-out tasks: {correct}/{len(HELD_OUT)}; labels {labels(body)}")
    assert correct >= 0.75 * len(HELD_OUT)
    # The worker now holds the embedding model: the next /predict needs no swap.
    body, elapsed = predict(swapping_web.base_url, HELD_OUT[:3])
    print(f"/predict of 3 tasks, embedding predictor, fitted model cached: {elapsed:.2f} s")
    assert elapsed < 10


def test_few_shot_prompts_use_the_stored_vectors_and_the_llm_through_a_swap_back(stack, project, swapping_web):
    update_project(stack, predictor="llm", few_shot_k=3)
    # Every text already has its vector (stored by the embedding predictor's /predict): the
    # examples are chosen without the embedding model and only tiny-llama is swapped back in.
    chosen = json.loads(
        stack.manage(
            "shell",
            "-c",
            "import json; from labeling.models import LabelingProject; from labeling import fewshot; "
            f"p = LabelingProject.objects.get(ls_project={PROJECT!r}); "
            f"tasks = [{{'id': i, 'data': {{'text': t}}}} for i, t, _ in {HELD_OUT[:6] + GROUND_TRUTH[:1]!r}]; "
            "print(json.dumps(fewshot.prompt_examples(p, p.parsed_config(), tasks)))",
        )
        .strip()
        .splitlines()[-1]
    )
    truth = {text: label for _, text, label in GROUND_TRUTH}
    for (_, text, label), examples in zip(HELD_OUT[:6] + GROUND_TRUTH[:1], chosen, strict=True):
        assert len(examples) == 3
        assert all(answer == truth[data["text"]] for data, answer in examples)
        assert text not in [data["text"] for data, _ in examples]  # never the task itself
        # Real MiniLM vectors: the most similar example (last) has the task's label.
        assert examples[-1][1] == label
    body, elapsed = predict(swapping_web.base_url, HELD_OUT)
    print(f"/predict of {len(HELD_OUT)} tasks, few-shot k=3, swap back to tiny-llama included: {elapsed:.1f} s")
    assert body["model_version"].startswith("tiny-llama@")
    log = (stack.var_dir / "learning-swap-web.log").read_text(errors="replace")
    assert "predicting zero-shot" not in log


def test_compare_scores_the_three_on_held_out_ground_truth(stack, project):
    wait_holds(stack, "tiny-llama")
    started = time.monotonic()
    out = stack.manage(
        "labelstudio", "compare", PROJECT, "--sizes", "6,12,30", "--held-out", "12", "--k", "2",
        "--json", str(stack.var_dir / "compare.json"),
    )  # fmt: skip
    print(f"labelstudio compare ({time.monotonic() - started:.1f} s):\n{out}")
    report = json.loads((stack.var_dir / "compare.json").read_text())
    assert (report["held_out"], report["pool"]) == (12, 30)
    assert [p["size"] for p in report["curve"]] == [6, 12, 30]
    assert report["zero_shot"]["controls"]["sentiment"]["tasks"] == 12
    for point in report["curve"]:
        assert point["few_shot"]["controls"]["sentiment"]["tasks"] == 12
    assert report["curve"][-1]["embedding"]["accuracy"] >= 0.75
