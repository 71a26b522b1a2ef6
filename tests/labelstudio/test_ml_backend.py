"""vllm-batch as the model of a real Label Studio 1.23.2, with strict prediction
validation on: Label Studio refuses a whole batch of predictions if one does not
fit the labeling config, so every stored prediction here passed its own check."""

import time

import pytest

from .conftest import project_with_backend

pytestmark = pytest.mark.e2e

CLASSIFICATION = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single-radio">
    <Choice value="Positive"/>
    <Choice value="Negative"/>
    <Choice value="Neutral"/>
  </Choices>
</View>"""

NER = """<View>
  <Labels name="label" toName="text">
    <Label value="PER"/>
    <Label value="ORG"/>
    <Label value="LOC"/>
  </Labels>
  <Text name="text" value="$text"/>
</View>"""

EVALUATION = """<View>
  <Header value="Question: $question"/>
  <Text name="answer" value="$answer"/>
  <Choices name="relevance" toName="answer">
    <Choice value="Relevant"/>
    <Choice value="Irrelevant"/>
  </Choices>
  <Choices name="issues" toName="answer" choice="multiple">
    <Choice value="Factual error"/>
    <Choice value="Rude"/>
    <Choice value="Too long"/>
  </Choices>
  <Rating name="quality" toName="answer" maxRating="5"/>
</View>"""

REVIEWS = [
    "The food was wonderful and the staff were friendly.",
    "Terrible service, we waited an hour for cold soup.",
    "It was fine. Nothing special.",
    "Best pizza in town, I will come back!",
    "The room smelled of smoke and the bed was broken.",
    "Décor charmant, café excellent — très bien.",
    "Okay prices, average taste.",
    "I would not recommend this place to anyone.",
]
NEWS = [
    "Barack Obama visited Seattle on Tuesday to meet Microsoft engineers.",
    "Angela Merkel met Emmanuel Macron in Paris.",
    "Apple opened a new store in Berlin next to the Siemens office.",
    "Paris and Paris again: Anna flew from Paris to Rome.",
    "Zoë Müller joined Siemens in München.",
]
ANSWERS = [
    {"question": "What is the capital of France?", "answer": "Paris is the capital of France."},
    {"question": "How many legs does a spider have?", "answer": "Spiders have six legs, like all insects."},
    {"question": "Who wrote Hamlet?", "answer": "Go read a book yourself."},
]


def stored_predictions(ls, task_ids):
    return {task_id: ls.predictions(task_id) for task_id in task_ids}


def check_choices(item, name, labels, multiple=False):
    assert item["from_name"] == name and item["type"] == "choices"
    chosen = item["value"]["choices"]
    assert chosen and set(chosen) <= set(labels)
    assert multiple or len(chosen) == 1


def check_spans(result, text, labels):
    for item in result:
        assert item["type"] == "labels" and item["from_name"] == "label" and item["to_name"] == "text"
        value = item["value"]
        assert text[value["start"] : value["end"]] == value["text"]
        assert len(value["labels"]) == 1 and value["labels"][0] in labels


def test_connecting_reaches_connected_and_setup_names_the_model(tiny_llama_ready, ls, backend_url):
    project, _, backend = project_with_backend(ls, backend_url, "connect check", CLASSIFICATION, [{"text": "hi"}])
    assert backend["state"] == "CO"
    listed = ls.ml_backends(project["id"])
    assert [b["id"] for b in listed] == [backend["id"]]
    assert listed[0]["model_version"].startswith("tiny-llama@")


def test_retrieve_predictions_for_text_classification(tiny_llama_ready, ls, backend_url):
    # 100 tasks go to /predict in one call, which Label Studio gives 100 s.
    tasks = [{"text": f"{REVIEWS[i % len(REVIEWS)]} ({i})"} for i in range(100)]
    project, task_ids, _ = project_with_backend(ls, backend_url, "classification", CLASSIFICATION, tasks)
    started = time.monotonic()
    answer = ls.retrieve_predictions(project["id"], task_ids)
    print(f"retrieve predictions, {len(task_ids)} classification tasks: {time.monotonic() - started:.1f} s")
    assert answer["processed_items"] == len(task_ids)
    predictions = stored_predictions(ls, task_ids)
    for task_id in task_ids:
        assert len(predictions[task_id]) == 1, f"task {task_id} has no prediction"
        prediction = predictions[task_id][0]
        assert prediction["model_version"].startswith("tiny-llama@")
        assert 0 <= prediction["score"] <= 1
        [item] = prediction["result"]
        check_choices(item, "sentiment", ["Positive", "Negative", "Neutral"])
        assert item["to_name"] == "text"


def test_retrieve_predictions_for_ner_spans(tiny_llama_ready, ls, backend_url):
    project, task_ids, _ = project_with_backend(ls, backend_url, "named entities", NER, [{"text": t} for t in NEWS])
    answer = ls.retrieve_predictions(project["id"], task_ids)
    assert answer["processed_items"] == len(task_ids)
    predictions = stored_predictions(ls, task_ids)
    for task_id, text in zip(task_ids, NEWS, strict=True):
        assert len(predictions[task_id]) == 1, f"task {task_id} has no prediction"
        check_spans(predictions[task_id][0]["result"], text, ["PER", "ORG", "LOC"])


def test_retrieve_predictions_for_several_controls_over_one_text(tiny_llama_ready, ls, backend_url):
    project, task_ids, _ = project_with_backend(ls, backend_url, "answer evaluation", EVALUATION, ANSWERS)
    assert ls.retrieve_predictions(project["id"], task_ids)["processed_items"] == len(task_ids)
    for task_id, predictions in stored_predictions(ls, task_ids).items():
        assert len(predictions) == 1, f"task {task_id} has no prediction"
        items = {item["from_name"]: item for item in predictions[0]["result"]}
        assert set(items) == {"relevance", "issues", "quality"}
        check_choices(items["relevance"], "relevance", ["Relevant", "Irrelevant"])
        check_choices(items["issues"], "issues", ["Factual error", "Rude", "Too long"], multiple=True)
        assert items["quality"]["type"] == "rating" and items["quality"]["value"]["rating"] in range(1, 6)
        assert all(item["to_name"] == "answer" for item in items.values())


def test_opening_a_task_without_predictions_asks_the_backend(tiny_llama_ready, ls, backend_url):
    project, [task_id], _ = project_with_backend(
        ls, backend_url, "task open", CLASSIFICATION, [{"text": "Lovely little place."}]
    )
    assert ls.predictions(task_id) == []
    task = ls.task(task_id)
    assert task["id"] == task_id
    [prediction] = ls.predictions(task_id)
    [item] = prediction["result"]
    check_choices(item, "sentiment", ["Positive", "Negative", "Neutral"])


def test_interactive_pre_annotation(tiny_llama_ready, ls, backend_url):
    project, [task_id], backend = project_with_backend(
        ls, backend_url, "interactive", NER, [{"text": "Anna Schmidt works for Siemens in Berlin."}]
    )
    context = {"result": [], "user": "annotator"}
    data = ls.interactive_annotating(backend["id"], task_id, context)
    assert data["model_version"].startswith("tiny-llama@")
    check_spans(data["result"], "Anna Schmidt works for Siemens in Berlin.", ["PER", "ORG", "LOC"])
