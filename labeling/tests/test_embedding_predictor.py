"""The embedding predictor through /labelstudio/predict (embeddings faked):
labels of the config with their probability, its own model_version, a refit when
the ground truth changes, clear errors; and the held-out comparison."""

import json

import pytest

from labeling import comparison
from labeling import examples as E
from labeling.learners import BlendVote
from labeling.models import Annotation, LabelingProject, PredictionLog
from workers.models import RegisteredModel

from .fakes import FakeChat
from .test_fewshot import CHOICES, GROUND_TRUTH, MULTI, FakeEmbed, add_ground_truth, choice

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(db):
    tiny = RegisteredModel.objects.create(name="tiny-llama", path="/models/tiny-llama")
    project = LabelingProject.objects.create(
        ls_project="8.1", ls_project_id=8, label_config=CHOICES, model=tiny, predictor="embedding"
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
def fits(monkeypatch):
    calls = []
    original = BlendVote.fit

    def fit(self, vectors, labels):
        calls.append(list(labels))
        return original(self, vectors, labels)

    monkeypatch.setattr(BlendVote, "fit", fit)
    return calls


def predict(client, tasks, config=CHOICES):
    body = {"project": "8.1", "label_config": config, "tasks": tasks}
    return client.post("/labelstudio/predict", data=json.dumps(body), content_type="application/json")


def test_predictions_are_the_configs_labels_with_their_probability(client, project, fake_embed, monkeypatch):
    monkeypatch.setattr("workers.inference.chat", FakeChat())  # never called
    tasks = [{"id": 20, "data": {"text": "great movie"}}, {"id": 21, "data": {"text": "awful food"}}]
    response = predict(client, tasks)
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"].startswith("all-MiniLM-L6-v2@blend@")
    labels = [r["result"][0]["value"]["choices"] for r in body["results"]]
    assert labels == [["Positive"], ["Negative"]]
    for entry in body["results"]:
        (item,) = entry["result"]
        assert (item["from_name"], item["to_name"], item["type"]) == ("sentiment", "text", "choices")
        assert 1 / 3 < entry["score"] <= 1 and entry["model_version"] == body["model_version"]
    assert PredictionLog.objects.filter(model_version=body["model_version"]).count() == 2
    # The score is the label's probability from BlendVote fitted on the stored vectors.
    stored = E.stored_vectors("all-MiniLM-L6-v2", [t for _, t, _ in GROUND_TRUTH] + ["great movie"])
    fitted = BlendVote().fit([stored[t] for _, t, _ in GROUND_TRUTH], [label for _, _, label in GROUND_TRUTH])
    ((label, score),) = fitted.predict([stored["great movie"]])
    assert (label, round(score, 6)) == ("Positive", round(body["results"][0]["score"], 6))


def test_the_fitted_model_is_reused_until_the_ground_truth_changes(client, project, fake_embed, fits):
    tasks = [{"id": 30, "data": {"text": "good weather"}}]
    predict(client, tasks)
    predict(client, tasks)
    assert len(fits) == 1
    add_ground_truth(project, 6, "good good weather", "Positive")
    add_ground_truth(project, 7, "great weather", "Positive")
    response = predict(client, tasks)
    assert len(fits) == 2 and len(fits[1]) == 7
    assert response.json()["results"][0]["result"][0]["value"]["choices"] == ["Positive"]


def test_without_ground_truth_tasks_get_empty_results_with_the_reason(client, project, fake_embed):
    Annotation.objects.all().delete()
    LabelingProject.objects.filter(pk=project.pk).update(ground_truth_revision=99)
    response = predict(client, [{"id": 1, "data": {"text": "good"}}])
    assert response.status_code == 200 and response.json()["results"][0]["result"] == []
    assert "no ground truth" in PredictionLog.objects.get().error


def test_a_config_it_cannot_predict_is_a_clear_400(client, project, fake_embed):
    response = predict(client, [{"id": 1, "data": {"answer": "x"}}], config=MULTI)
    assert response.status_code == 400
    assert response.json()["code"] == "predictor_not_supported"


def test_no_embedding_worker_is_a_503(client, project, monkeypatch):
    monkeypatch.setattr("workers.inference.embed", FakeEmbed(fail=True))
    response = predict(client, [{"id": 1, "data": {"text": "good"}}])
    assert response.status_code == 503 and response.json()["code"] == "model_not_loaded"


# The held-out comparison -------------------------------------------------------


def test_learning_curve_scores_held_out_tasks_never_shown_as_their_own_examples(project, fake_embed, monkeypatch):
    for i in range(40):
        text, label = [("good movie", "Positive"), ("awful food", "Negative"), ("the weather", "Neutral")][i % 3]
        add_ground_truth(project, 100 + i, f"{text} {i}", label)
    chat = FakeChat()
    monkeypatch.setattr("workers.inference.chat", chat)
    report = comparison.learning_curve(project, sizes=[5, 20, 500], held_out=10, seed=3, k=3)
    json.dumps(report)
    assert (report["ground_truth"], report["held_out"], report["pool"]) == (45, 10, 35)
    assert report["skipped_sizes"] == [500] and [p["size"] for p in report["curve"]] == [5, 20]
    # Bag-of-words vectors separate the three labels: the embedding predictor learns them.
    assert report["curve"][1]["embedding"]["accuracy"] == 1.0
    # The fake LLM answers the first choice: zero-shot and few-shot score its share.
    assert report["zero_shot"]["controls"]["sentiment"]["tasks"] == 10
    zero_shot, few_shot_5, few_shot_20 = chat.calls
    assert all(len(r["messages"]) == 1 for r in zero_shot["requests"])
    assert all(len(r["messages"]) == 7 for r in few_shot_20["requests"])
    for call in (few_shot_5, few_shot_20):
        for request in call["requests"]:
            task_text = request["messages"][-1]["content"]
            shown = [m["content"] for m in request["messages"][:-1] if m["role"] == "user"]
            assert task_text not in shown
    assert comparison.summary_rows(report)[0][0] == 5


def test_learning_curve_refuses_what_it_cannot_compare(project, fake_embed):
    with pytest.raises(comparison.ComparisonError, match="too few"):
        comparison.learning_curve(project, held_out=5)
    with pytest.raises(comparison.ComparisonError, match="Unknown methods"):
        comparison.learning_curve(project, methods=["magic"])


def test_ground_truth_examples_skip_cancelled_deleted_and_unanswerable(project):
    a = Annotation.objects.get(task__ls_task_id=1)
    a.deleted_at = a.ground_truth_at
    a.save()
    b = Annotation.objects.get(task__ls_task_id=2)
    b.result = choice("Nope")
    b.save()
    config = project.parsed_config()
    assert [e.task_id for e in E.ground_truth_examples(project, config)] == [3, 4, 5]


def test_the_compare_and_embed_commands(project, fake_embed, tmp_path):
    from io import StringIO

    from django.core.management import call_command

    for i in range(20):
        text, label = [("good movie", "Positive"), ("awful food", "Negative")][i % 2]
        add_ground_truth(project, 200 + i, f"{text} {i}", label)
    out = StringIO()
    call_command("labelstudio", "embed", "8", stdout=out)
    assert out.getvalue().strip() == "Embedded 25 ground-truth texts."
    report_path = tmp_path / "report.json"
    out = StringIO()
    call_command(
        "labelstudio", "compare", "8", "--sizes", "5,10,100", "--held-out", "10", "--methods", "embedding",
        "--json", str(report_path), stdout=out,
    )  # fmt: skip
    lines = out.getvalue().splitlines()
    assert lines[1].split() == ["examples", "zero-shot", "few-shot", "embedding"]
    assert lines[2].split()[:3] == ["5", "-", "-"] and lines[3].split()[0] == "10"
    assert "skipped (more than the pool): [100]" in lines[-1]
    assert json.loads(report_path.read_text())["curve"][1]["embedding"]["tasks"] == 10
    assert len(fake_embed.calls) == 1  # everything was embedded by `embed`


def test_admin_sets_the_predictor_and_refuses_it_for_a_config_it_cannot_predict(admin_client, project):
    url = f"/admin/labeling/labelingproject/{project.id}/change/"
    data = {
        "ls_project": project.ls_project,
        "ls_project_id": project.ls_project_id,
        "label_config": MULTI,
        "model": project.model_id,
        "prompt_templates": "{}",
        "sample_task_data": "{}",
        "temperature": "0",
        "max_tokens": "512",
        "predictor": "embedding",
        "few_shot_k": "0",
        "predictions-TOTAL_FORMS": "0",
        "predictions-INITIAL_FORMS": "0",
        "predictions-MIN_NUM_FORMS": "0",
        "predictions-MAX_NUM_FORMS": "0",
    }
    response = admin_client.post(url, data)
    assert response.status_code == 200 and "one single-choice Choices control only" in response.content.decode()
    response = admin_client.post(url, {**data, "label_config": CHOICES, "predictor": "llm", "few_shot_k": "4"})
    assert response.status_code == 302
    project.refresh_from_db()
    assert (project.predictor, project.few_shot_k) == ("llm", 4)
    response = admin_client.post(url, {**data, "label_config": CHOICES, "few_shot_k": "17"})
    assert response.status_code == 200
    project.refresh_from_db()
    assert project.few_shot_k == 4


def test_a_ground_truth_task_is_predicted_by_a_model_that_never_saw_it(client, project, fake_embed, fits):
    tasks = [{"id": 2, "data": {"text": "great great movie"}}, {"id": 40, "data": {"text": "good food"}}]
    body = predict(client, tasks).json()
    assert sorted(len(labels) for labels in fits) == [4, 5]  # the full model, and one without task 2
    assert all(r["result"][0]["value"]["choices"][0] in ("Positive", "Negative", "Neutral") for r in body["results"])
    everything = [{"id": task_id, "data": {"text": text}} for task_id, text, _ in GROUND_TRUTH]
    body = predict(client, everything).json()
    assert all(r["result"] == [] for r in body["results"])
    assert "no ground truth besides the tasks of this call" in PredictionLog.objects.latest("id").error
