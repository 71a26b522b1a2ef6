"""Label Studio's recorded requests (labeling/tests/fixtures, Label Studio 1.23.2)
through the views, with inference faked: replies of the recorded shape."""

import base64
import json
from pathlib import Path

import pytest

from batchsite.errors import ApiError
from labeling.models import LabelingProject, PredictionLog
from workers.models import RegisteredModel

from .fakes import FakeChat

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.django_db


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


def send(client, name, path=None, body=None, **headers):
    request = fixture(name)["request"]
    url = "/labelstudio" + (path or request["path"])
    body = request["body"] if body is None else body
    if request["method"] == "GET":
        return client.get(url, **headers)
    return client.post(url, data=json.dumps(body), content_type="application/json", **headers)


def shape(value):
    """The structure of a JSON value: keys and types, not the values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


@pytest.fixture
def tiny(db):
    return RegisteredModel.objects.create(name="tiny-llama", path="/models/tiny-llama")


@pytest.fixture
def fake_chat(monkeypatch):
    fake = FakeChat(
        answers={
            "Barack Obama": {"label": [{"text": "Barack Obama", "label": "PER"}, {"text": "Seattle", "label": "LOC"}]},
            "angela merkel": {"label": [{"text": "Siemens", "label": "ORG"}]},
            "Paris is lovely": {"label": [{"text": "Paris", "label": "LOC"}, {"text": "Berlin", "label": "LOC"}]},
            "Terrible service": "Negative",
        }
    )
    monkeypatch.setattr("workers.inference.chat", fake)
    return fake


def test_health_answers_up_without_touching_the_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = send(client, "ml_health_request.json")
    assert response.status_code == 200
    assert response.json() == {"status": "UP", "model_class": "vllm-batch"}


@pytest.mark.parametrize("path", ["/health", "/health/"])
def test_both_with_and_without_trailing_slash(client, path):
    assert send(client, "ml_health_request.json", path=path).status_code == 200


def test_setup_creates_the_project_and_returns_its_model_version(client, tiny):
    response = send(client, "ml_setup_request.json")
    assert response.status_code == 200
    project = LabelingProject.objects.get()
    assert response.json() == {"model_version": project.model_version}
    assert project.ls_project == "1.1795811871"
    assert project.ls_project_id == 1
    assert project.model == tiny
    assert project.ls_hostname == "http://localhost:8080"
    assert project.ls_access_token == "<REDACTED>"
    assert project.model_version.startswith("tiny-llama@")


def test_setup_again_with_a_new_config_changes_the_version(client, tiny):
    first = send(client, "ml_setup_request.json").json()["model_version"]
    assert send(client, "ml_setup_request.json").json()["model_version"] == first
    body = fixture("ml_setup_request.json")["request"]["body"]
    body["schema"] = body["schema"].replace('<Choice value="Neutral"/>', "")
    second = send(client, "ml_setup_request.json", body=body).json()["model_version"]
    assert second != first
    assert LabelingProject.objects.count() == 1


def test_versions_lists_the_projects_versions(client, tiny):
    version = send(client, "ml_setup_request.json").json()["model_version"]
    response = send(client, "ml_versions_request.json")
    assert response.status_code == 200
    assert shape(response.json()) == shape(
        fixture("ml_versions_request.json")["response_sent_by_capture_server"]["body"]
    )
    assert response.json()["versions"] == [version]


@pytest.mark.parametrize(
    "name",
    [
        "ml_predict_request.json",
        "ml_predict_request_ner.json",
        "ml_predict_request_interactive.json",
        "ml_predict_request_task_open.json",
    ],
)
def test_predict_replies_in_the_recorded_shape(client, tiny, fake_chat, name):
    recorded = fixture(name)
    response = send(client, name)
    assert response.status_code == 200, response.content
    reply = response.json()
    expected = recorded["response_sent_by_capture_server"]["body"]
    tasks = recorded["request"]["body"]["tasks"]
    assert len(reply["results"]) == len(tasks)
    assert shape(reply) == shape(expected)
    for entry in reply["results"]:
        assert 0 <= entry["score"] <= 1
        assert entry["model_version"] == reply["model_version"]
    # All tasks went to the engine in one call.
    assert len(fake_chat.calls) == 1
    assert len(fake_chat.calls[0]["requests"]) == len(tasks)
    assert fake_chat.calls[0]["model"] == "tiny-llama"
    assert PredictionLog.objects.count() == len(tasks)


def test_predict_choices_gives_the_answered_label_in_task_order(client, tiny, fake_chat):
    reply = send(client, "ml_predict_request.json").json()
    assert [e["result"][0]["value"]["choices"] for e in reply["results"]] == [["Positive"], ["Negative"], ["Positive"]]
    request = fake_chat.calls[0]["requests"][1]
    assert request["guided_choice"] == ["Positive", "Negative", "Neutral"]
    assert "Terrible service, never again." in request["messages"][0]["content"]


def test_predict_ner_places_spans_at_exact_offsets(client, tiny, fake_chat):
    reply = send(client, "ml_predict_request_ner.json").json()
    tasks = fixture("ml_predict_request_ner.json")["request"]["body"]["tasks"]
    spans = [[(r["value"]["text"], r["value"]["labels"]) for r in e["result"]] for e in reply["results"]]
    assert spans == [[("Barack Obama", ["PER"]), ("Seattle", ["LOC"])], [("Siemens", ["ORG"])], [("Paris", ["LOC"])]]
    for task, entry in zip(tasks, reply["results"], strict=True):
        for item in entry["result"]:
            value = item["value"]
            assert task["data"]["text"][value["start"] : value["end"]] == value["text"]
            assert item["from_name"] == "label" and item["to_name"] == "text" and item["type"] == "labels"
            assert 0 <= item["score"] <= 1


def test_predict_for_an_unknown_project_creates_it(client, tiny, fake_chat):
    send(client, "ml_predict_request_ner.json")
    project = LabelingProject.objects.get()
    assert project.ls_project == "2.1795811873"
    assert project.sample_task_data == {"text": "Barack Obama visited Microsoft in Seattle."}


def test_a_task_whose_generation_failed_gets_an_empty_result(client, tiny, monkeypatch):
    fake = FakeChat(fail={"Terrible service"})
    monkeypatch.setattr("workers.inference.chat", fake)
    reply = send(client, "ml_predict_request.json").json()
    assert [len(e["result"]) for e in reply["results"]] == [1, 0, 1]
    assert reply["results"][1]["score"] is None
    log = PredictionLog.objects.get(task_id=2)
    assert "prompt too long" in log.error


def test_no_worker_holding_the_model_is_a_503_with_the_reason(client, tiny, monkeypatch):
    def no_worker(requests, *, model, timeout=None):
        raise ApiError(
            f"No worker has the model '{model}' loaded; try again later.", code="model_not_loaded", status_code=503
        )

    monkeypatch.setattr("workers.inference.chat", no_worker)
    response = send(client, "ml_predict_request.json")
    assert response.status_code == 503
    assert response.json() == {
        "error": "No worker has the model 'tiny-llama' loaded; try again later.",
        "code": "model_not_loaded",
    }


def test_no_model_registered_is_a_503_that_says_what_to_do(client, fake_chat):
    response = send(client, "ml_predict_request.json")
    assert response.status_code == 503
    assert "No model is set" in response.json()["error"]
    assert fake_chat.calls == []


def test_the_timeout_passed_to_inference_stays_below_label_studios(client, tiny, fake_chat, settings):
    send(client, "ml_predict_request.json")
    assert fake_chat.calls[0]["timeout"] == settings.LABEL_STUDIO_PREDICT_TIMEOUT < 100


@pytest.mark.parametrize(
    "name", ["ml_webhook_START_TRAINING.json", "ml_webhook_ANNOTATION_CREATED.json", "ml_train_request.json"]
)
def test_webhook_and_train_answer_ok_without_training(client, name):
    response = send(client, name)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    if name == "ml_train_request.json":
        assert "does not train" in response.json()["message"]
    if "START_TRAINING" in name:
        assert "fine-tuning file" in response.json()["message"]


@pytest.mark.parametrize(
    ("path", "data", "status"),
    [
        ("/predict", "{not json", 400),
        ("/predict", "[1, 2]", 400),
        ("/predict", json.dumps({"tasks": "x", "project": "1.2", "label_config": "<View/>"}), 400),
        ("/predict", json.dumps({"tasks": [], "project": "abc", "label_config": "<View/>"}), 400),
        ("/predict", json.dumps({"tasks": [], "project": "1.2", "label_config": "<View><Text"}), 400),
        ("/setup", json.dumps({"project": "1.2", "schema": 5}), 400),
        ("/setup", json.dumps({"project": "1.2", "schema": "<View></View>"}), 400),
        ("/setup", b"\xff\xfe", 400),
        ("/webhook", "", 400),
    ],
)
def test_bad_input_is_a_clear_400(client, tiny, path, data, status):
    response = client.post("/labelstudio" + path, data=data, content_type="application/json")
    assert response.status_code == status
    assert isinstance(response.json()["error"], str) and response.json()["error"]


def test_an_xml_bomb_is_refused(client, tiny):
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
        '<View><Text name="t" value="&lol2;"/></View>'
    )
    response = client.post(
        "/labelstudio/setup", data=json.dumps({"project": "1.2", "schema": bomb}), content_type="application/json"
    )
    assert response.status_code == 400
    assert "forbidden" in response.json()["error"]


def test_a_body_over_the_limit_is_413(client, tiny, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = client.post(
        "/labelstudio/predict",
        data=json.dumps({"tasks": [{"data": {"text": "x" * 2000}}]}),
        content_type="application/json",
    )
    assert response.status_code == 413


def test_wrong_method_is_405(client):
    assert client.get("/labelstudio/predict").status_code == 405


class TestBasicAuth:
    @pytest.fixture(autouse=True)
    def credentials(self, settings):
        settings.LABEL_STUDIO_BACKEND_USERNAME = "ls"
        settings.LABEL_STUDIO_BACKEND_PASSWORD = "s3cret:with colon"

    @staticmethod
    def header(user, password):
        return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    def test_the_right_credentials_pass(self, client, tiny, fake_chat):
        assert send(client, "ml_health_request.json", **self.header("ls", "s3cret:with colon")).status_code == 200
        assert send(client, "ml_predict_request.json", **self.header("ls", "s3cret:with colon")).status_code == 200

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"HTTP_AUTHORIZATION": "Bearer abc"},
            {"HTTP_AUTHORIZATION": "Basic !!!"},
            {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"ls:wrong").decode()},
            {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"other:s3cret:with colon").decode()},
        ],
    )
    def test_anything_else_is_401_and_nothing_happens(self, client, tiny, fake_chat, headers):
        for name in (
            "ml_health_request.json",
            "ml_setup_request.json",
            "ml_predict_request.json",
            "ml_webhook_START_TRAINING.json",
        ):
            response = send(client, name, **headers)
            assert response.status_code == 401
            assert response["WWW-Authenticate"].startswith("Basic ")
        assert LabelingProject.objects.count() == 0
        assert fake_chat.calls == []
