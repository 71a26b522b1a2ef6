"""Few-shot prompts from ground truth: answers in the guided format, the k most
similar examples in order, never the task itself, vectors stored and reused,
zero-shot when no embedding worker answers."""

import json
import logging

import numpy as np
import pytest
from django.utils import timezone

from labeling import examples as E
from labeling import services
from labeling.fewshot import nearest_examples
from labeling.label_config import parse_label_config
from labeling.models import Annotation, LabelingProject, LabelingTask, TextEmbedding
from labeling.predictions import answer_text
from workers.models import RegisteredModel
from workers.realtime.wire import ModelNotLoaded

from .fakes import FakeChat

CHOICES = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="Positive"/><Choice value="Negative"/><Choice value="Neutral"/></Choices></View>'
)
MULTI = (
    '<View><Text name="a" value="$answer"/>'
    '<Choices name="ok" toName="a"><Choice value="Yes"/><Choice value="No"/></Choices>'
    '<Labels name="ents" toName="a"><Label value="PER"/></Labels>'
    '<Rating name="stars" toName="a" maxRating="4"/><TextArea name="why" toName="a"/></View>'
)
VOCAB = ["good", "great", "bad", "awful", "movie", "food", "service", "weather"]


def bag_of_words(text):
    words = text.lower().replace(".", " ").split()
    return [float(words.count(w)) for w in VOCAB] + [0.01]


class FakeEmbed:
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def __call__(self, texts, *, model, timeout=None):
        self.calls.append({"texts": list(texts), "model": model, "timeout": timeout})
        if self.fail:
            raise ModelNotLoaded(f"No worker has the model '{model}' loaded; try again later.", code="model_not_loaded")
        return [bag_of_words(t) for t in texts]


def choice(label, name="sentiment"):
    return [{"from_name": name, "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def add_ground_truth(project, ls_task_id, text, label, key="text"):
    task = LabelingTask.objects.create(project=project, ls_task_id=ls_task_id, data={key: text})
    Annotation.objects.create(
        project=project,
        task=task,
        ls_annotation_id=1000 + ls_task_id,
        result=choice(label) if isinstance(label, str) else label,
        ground_truth=True,
        ground_truth_at=timezone.now(),
    )
    LabelingProject.objects.filter(pk=project.pk).update(ground_truth_revision=project.ground_truth_revision + 1)
    project.refresh_from_db()


GROUND_TRUTH = [
    (1, "good movie", "Positive"),
    (2, "great great movie", "Positive"),
    (3, "bad food", "Negative"),
    (4, "awful awful service", "Negative"),
    (5, "the weather", "Neutral"),
]


@pytest.fixture
def project(db):
    tiny = RegisteredModel.objects.create(name="tiny-llama", path="/models/tiny-llama")
    project = LabelingProject.objects.create(
        ls_project="7.1", ls_project_id=7, label_config=CHOICES, model=tiny, few_shot_k=2
    )
    for task_id, text, label in GROUND_TRUTH:
        add_ground_truth(project, task_id, text, label)
    E._cache.clear()
    return project


@pytest.fixture
def fake_embed(monkeypatch):
    fake = FakeEmbed()
    monkeypatch.setattr("workers.inference.embed", fake)
    return fake


@pytest.fixture
def fake_chat(monkeypatch):
    fake = FakeChat()
    monkeypatch.setattr("workers.inference.chat", fake)
    return fake


def turns(request):
    return [(m["role"], m["content"]) for m in request["messages"]]


# Answers in the guided format -------------------------------------------------


def test_answer_text_is_the_label_for_a_single_choice():
    config = parse_label_config(CHOICES)
    assert answer_text(config, choice("Negative"), {"text": "x"}) == "Negative"
    assert answer_text(config, choice("Not a choice"), {"text": "x"}) is None
    assert answer_text(config, [], {"text": "x"}) is None


def test_answer_text_is_the_json_object_the_schema_asks_for():
    config = parse_label_config(MULTI)
    data = {"answer": "Ada Lovelace wrote it."}
    result = [
        {"from_name": "ok", "to_name": "a", "type": "choices", "value": {"choices": ["Yes"]}},
        {"from_name": "ents", "to_name": "a", "type": "labels", "value": {"start": 0, "end": 12, "labels": ["PER"]}},
        {"from_name": "stars", "to_name": "a", "type": "rating", "value": {"rating": 3}},
        {"from_name": "why", "to_name": "a", "type": "textarea", "value": {"text": ["Clear."]}},
    ]
    assert json.loads(answer_text(config, result, data)) == {
        "ok": "Yes",
        "ents": [{"text": "Ada Lovelace", "label": "PER"}],
        "stars": 3,
        "why": "Clear.",
    }
    # A control left unanswered: no complete answer to teach.
    assert answer_text(config, result[:2], data) is None
    # No entities is an answer.
    assert json.loads(answer_text(config, [result[0], *result[2:]], data))["ents"] == []


# Nearest examples -------------------------------------------------------------


def test_nearest_examples_leave_out_the_task_itself_and_keep_the_order_of_similarity():
    examples = [E.Example(i, {}, [], t, a) for i, t, a in GROUND_TRUTH]
    index = E.Index(examples, np.array([bag_of_words(t) for _, t, _ in GROUND_TRUTH]), complete=True)
    queries = [bag_of_words("great movie"), bag_of_words("great movie")]
    own, other = nearest_examples(index, queries, [2, 99], k=2)
    assert [examples[i].task_id for i in other] == [2, 1]
    assert [examples[i].task_id for i in own] == [1, 5]  # task 2 is never its own example


# Few-shot through /predict's service -------------------------------------------


def test_prompts_hold_the_k_most_similar_examples_most_similar_last(project, fake_embed, fake_chat):
    tasks = [{"id": 50, "data": {"text": "great movie"}}, {"id": 51, "data": {"text": "awful food"}}]
    results = services.predict_tasks(project=project, tasks=tasks)
    assert len(results) == 2 and all(r["model_version"] == project.model_version for r in results)
    first, second = fake_chat.calls[0]["requests"]
    assert turns(first)[0][0] == "user" and "good movie" in turns(first)[0][1]
    assert turns(first)[1] == ("assistant", "Positive")
    assert "great great movie" in turns(first)[2][1] and turns(first)[3] == ("assistant", "Positive")
    assert turns(first)[4][0] == "user" and "great movie" in turns(first)[4][1]
    assert len(first["messages"]) == 5  # k=2 examples, then the task
    assert first["guided_choice"] == ["Positive", "Negative", "Neutral"]
    assert [c for r, c in turns(second) if r == "assistant"] == ["Negative", "Negative"]
    assert "awful awful service" in turns(second)[2][1]  # the most similar, next to the task
    # One embed call for the tasks and the ground truth; the vectors are stored.
    assert len(fake_embed.calls) == 1
    assert sorted(fake_embed.calls[0]["texts"]) == sorted(
        ["great movie", "awful food", *(t for _, t, _ in GROUND_TRUTH)]
    )
    assert fake_embed.calls[0]["model"] == "all-MiniLM-L6-v2"
    assert TextEmbedding.objects.count() == 7


def test_a_ground_truth_task_is_never_its_own_example_and_stored_vectors_are_reused(project, fake_embed, fake_chat):
    services.predict_tasks(project=project, tasks=[{"id": 2, "data": {"text": "great great movie"}}])
    services.predict_tasks(project=project, tasks=[{"id": 2, "data": {"text": "great great movie"}}])
    assert len(fake_embed.calls) == 1  # the second /predict found every vector stored
    for call in fake_chat.calls:
        (request,) = call["requests"]
        examples = [c for r, c in turns(request)[:-1] if r == "user"]
        assert len(examples) == 2 and not any("great great movie" in e for e in examples)


def test_without_an_embedding_worker_predict_goes_on_zero_shot(project, monkeypatch, fake_chat, caplog):
    monkeypatch.setattr("workers.inference.embed", FakeEmbed(fail=True))
    with caplog.at_level(logging.WARNING, logger="labeling.fewshot"):
        results = services.predict_tasks(project=project, tasks=[{"id": 60, "data": {"text": "good food"}}])
    assert results[0]["result"][0]["value"]["choices"] == ["Positive"]
    (request,) = fake_chat.calls[0]["requests"]
    assert len(request["messages"]) == 1
    assert "predicting zero-shot" in caplog.text and "model_not_loaded" in caplog.text


def test_few_shot_off_or_no_ground_truth_asks_no_embedding(project, fake_embed, fake_chat):
    project.few_shot_k = 0
    project.save()
    services.predict_tasks(project=project, tasks=[{"id": 60, "data": {"text": "good food"}}])
    Annotation.objects.all().delete()
    project.few_shot_k = 3
    project.save()
    services.predict_tasks(project=project, tasks=[{"id": 61, "data": {"text": "good food"}}])
    assert all(len(c["requests"][0]["messages"]) == 1 for c in fake_chat.calls)
    assert (
        len(fake_embed.calls) <= 1 and TextEmbedding.objects.filter(text_sha256=E.text_key("good movie")).count() == 0
    )


def test_the_embed_call_is_bounded_and_the_rest_follows_later(project, fake_embed, fake_chat, monkeypatch):
    monkeypatch.setattr(E, "PREDICT_EMBED_LIMIT", 3)
    services.predict_tasks(project=project, tasks=[{"id": 70, "data": {"text": "good weather"}}])
    assert len(fake_embed.calls[0]["texts"]) == 3 and fake_embed.calls[0]["texts"][0] == "good weather"
    for _ in range(2):
        services.predict_tasks(project=project, tasks=[{"id": 70, "data": {"text": "good weather"}}])
    # 6 texts, 3 per /predict: the second call embeds the rest, the third none.
    assert TextEmbedding.objects.count() == 6 and len(fake_embed.calls) == 2
    (request,) = fake_chat.calls[-1]["requests"]
    assert len(request["messages"]) == 5


def test_model_version_says_few_shot_and_predictor(project):
    few_shot = project.model_version
    project.few_shot_k = 0
    project.save()
    zero_shot = project.model_version
    project.predictor = "embedding"
    project.save()
    assert len({few_shot, zero_shot, project.model_version}) == 3
    assert zero_shot.startswith("tiny-llama@") and project.model_version.startswith("all-MiniLM-L6-v2@blend@")
