"""The Label Studio client against a stubbed transport, with Label Studio 1.23.2's answer shapes."""

import json

import httpx
import pytest

from labeling.client import LabelStudio, LabelStudioError

TOKEN = "abc123tokenabc123"


class FakeLabelStudio:
    """Records requests and answers from a handler per (method, path)."""

    def __init__(self, routes):
        self.routes = routes
        self.requests = []

    def __call__(self, request):
        self.requests.append(request)
        handler = self.routes.get((request.method, request.url.path))
        if handler is None:
            return httpx.Response(404, json={"detail": "Not found.", "status_code": 404})
        return handler(request)

    def client(self, **kwargs):
        return LabelStudio("http://ls.test/", TOKEN, transport=httpx.MockTransport(self), **kwargs)


def body(request):
    return json.loads(request.content)


def paged_tasks(count):
    tasks = [{"id": i + 1, "data": {"text": f"t{i}"}} for i in range(count)]

    def handler(request):
        page = int(request.url.params["page"])
        size = int(request.url.params["page_size"])
        chunk = tasks[(page - 1) * size : page * size]
        if not chunk and page > 1:
            return httpx.Response(404, json={"status_code": 404, "detail": "Invalid page."})
        return httpx.Response(200, json={"total": len(tasks), "tasks": chunk, "total_predictions": 0})

    return handler


def test_every_call_sends_the_token_header():
    fake = FakeLabelStudio({("GET", "/api/projects/7/"): lambda r: httpx.Response(200, json={"id": 7})})
    with fake.client() as ls:
        assert ls.project(7) == {"id": 7}
    assert fake.requests[0].headers["Authorization"] == f"Token {TOKEN}"


@pytest.mark.parametrize("count", [0, 1, 99, 100, 101, 250])
def test_tasks_walks_every_page(count):
    fake = FakeLabelStudio({("GET", "/api/tasks/"): paged_tasks(count)})
    with fake.client() as ls:
        ids = [t["id"] for t in ls.tasks(3)]
    assert ids == list(range(1, count + 1))
    assert all(r.url.params["project"] == "3" for r in fake.requests)
    assert len(fake.requests) <= count // 100 + 1


def test_tasks_with_predictions_asks_for_all_fields():
    fake = FakeLabelStudio({("GET", "/api/tasks/"): paged_tasks(3)})
    with fake.client() as ls:
        assert len(list(ls.tasks(3, with_predictions=True))) == 3
        assert len(list(ls.tasks(3))) == 3
    assert fake.requests[0].url.params["fields"] == "all"
    assert "fields" not in fake.requests[1].url.params


def test_tasks_stops_when_tasks_vanish_between_pages():
    pages = {1: [{"id": 1}, {"id": 2}]}

    def handler(request):
        page = int(request.url.params["page"])
        if page not in pages:
            return httpx.Response(404, json={"detail": "Invalid page."})
        return httpx.Response(200, json={"total": 5, "tasks": pages[page]})

    fake = FakeLabelStudio({("GET", "/api/tasks/"): handler})
    with fake.client() as ls:
        assert [t["id"] for t in ls.tasks(1, page_size=2)] == [1, 2]


def test_tasks_of_a_missing_project_is_an_error():
    fake = FakeLabelStudio(
        {("GET", "/api/tasks/"): lambda r: httpx.Response(404, json={"detail": "No Project matches the given query."})}
    )
    with fake.client() as ls, pytest.raises(LabelStudioError) as err:
        list(ls.tasks(99))
    assert err.value.status == 404
    assert "No Project matches" in err.value.message


def test_validation_errors_are_in_the_message():
    answer = {
        "status_code": 400,
        "detail": "Validation error",
        "validation_errors": {"label_config": ["unclosed token: line 1, column 6"]},
    }
    fake = FakeLabelStudio({("POST", "/api/projects/"): lambda r: httpx.Response(400, json=answer)})
    with fake.client() as ls, pytest.raises(LabelStudioError) as err:
        ls.create_project("proj", "<View><Choices")
    assert err.value.status == 400
    assert "unclosed token" in err.value.message
    assert body(fake.requests[0]) == {"title": "proj", "label_config": "<View><Choices"}


def test_a_bad_token_is_a_401_error():
    fake = FakeLabelStudio(
        {("GET", "/api/projects/1/"): lambda r: httpx.Response(401, json={"detail": "Invalid token."})}
    )
    with fake.client() as ls, pytest.raises(LabelStudioError) as err:
        ls.project(1)
    assert (err.value.status, err.value.message) == (401, "Invalid token.")


def test_a_non_json_error_page_keeps_its_text():
    fake = FakeLabelStudio({("GET", "/api/projects/1/"): lambda r: httpx.Response(502, text="Bad gateway\n")})
    with fake.client() as ls, pytest.raises(LabelStudioError) as err:
        ls.project(1)
    assert (err.value.status, err.value.message) == (502, "Bad gateway")


def test_unreachable_and_slow_servers_are_errors_without_status():
    def refuse(request):
        raise httpx.ConnectError("connection refused")

    def slow(request):
        raise httpx.ReadTimeout("timed out")

    for handler, words in ((refuse, "cannot reach http://ls.test"), (slow, "timed out")):
        fake = FakeLabelStudio({("GET", "/api/projects/1/"): handler})
        with fake.client() as ls, pytest.raises(LabelStudioError) as err:
            ls.project(1)
        assert err.value.status is None
        assert words in err.value.message


def test_a_missing_url_or_token_is_refused_before_any_call():
    with pytest.raises(LabelStudioError):
        LabelStudio("", TOKEN)
    with pytest.raises(LabelStudioError):
        LabelStudio("http://ls.test", "")


def test_import_tasks_returns_the_new_ids():
    fake = FakeLabelStudio(
        {("POST", "/api/projects/4/import"): lambda r: httpx.Response(201, json={"task_count": 2, "task_ids": [8, 9]})}
    )
    with fake.client() as ls:
        assert ls.import_tasks(4, [{"data": {"text": "a"}}, {"text": "b"}]) == [8, 9]
    assert fake.requests[0].url.params["return_task_ids"] == "true"
    assert body(fake.requests[0]) == [{"data": {"text": "a"}}, {"text": "b"}]


def test_create_predictions_posts_in_chunks_and_counts():
    def created(request):
        return httpx.Response(201, json={"created": len(body(request))})

    fake = FakeLabelStudio({("POST", "/api/projects/2/import/predictions"): created})
    items = [{"task": i, "result": [], "score": 0.5, "model_version": "m@1"} for i in range(1, 1202)]
    with fake.client() as ls:
        assert ls.create_predictions(2, items) == 1201
    assert [len(body(r)) for r in fake.requests] == [500, 500, 201]
    assert body(fake.requests[2])[-1]["task"] == 1201


def test_create_predictions_with_an_invalid_item_raises():
    answer = {"detail": "Validation error", "validation_errors": {"non_field_errors": ["Prediction 0: bad choice"]}}
    fake = FakeLabelStudio({("POST", "/api/projects/2/import/predictions"): lambda r: httpx.Response(400, json=answer)})
    with fake.client() as ls, pytest.raises(LabelStudioError) as err:
        ls.create_predictions(2, [{"task": 1, "result": [{"type": "choices"}]}])
    assert "bad choice" in err.value.message


def test_retrieve_predictions_runs_the_data_manager_action():
    fake = FakeLabelStudio(
        {("POST", "/api/dm/actions"): lambda r: httpx.Response(200, json={"processed_items": 2, "detail": "ok"})}
    )
    with fake.client() as ls:
        assert ls.retrieve_predictions(5, [10, 11])["processed_items"] == 2
    request = fake.requests[0]
    assert dict(request.url.params) == {"id": "retrieve_tasks_predictions", "project": "5"}
    assert body(request) == {"selectedItems": {"all": False, "included": [10, 11]}}


def test_connect_ml_backend_with_basic_auth_returns_the_connected_backend():
    def connect(request):
        return httpx.Response(201, json={**body(request), "id": 3, "state": "CO"})

    fake = FakeLabelStudio({("POST", "/api/ml/"): connect})
    with fake.client() as ls:
        backend = ls.connect_ml_backend(5, "http://127.0.0.1:8000/labelstudio/", "vllm", auth=("u", "p"))
    assert backend["id"] == 3
    sent = body(fake.requests[0])
    assert sent["auth_method"] == "BASIC_AUTH"
    assert (sent["basic_auth_user"], sent["basic_auth_pass"]) == ("u", "p")
    assert sent["is_interactive"] is True


def test_connect_ml_backend_that_is_not_connected_raises():
    fake = FakeLabelStudio(
        {("POST", "/api/ml/"): lambda r: httpx.Response(201, json={"id": 3, "state": "ER", "error_message": "boom"})}
    )
    with fake.client() as ls, pytest.raises(LabelStudioError) as err:
        ls.connect_ml_backend(5, "http://x/", "vllm")
    assert "'ER'" in err.value.message and "boom" in err.value.message


def test_connect_ml_backend_that_fails_validation_raises_with_the_reason():
    answer = {"detail": "Validation error", "validation_errors": {"url": ["Can't connect to ML backend"]}}
    fake = FakeLabelStudio({("POST", "/api/ml/"): lambda r: httpx.Response(400, json=answer)})
    with fake.client() as ls, pytest.raises(LabelStudioError) as err:
        ls.connect_ml_backend(5, "http://x/", "vllm")
    assert err.value.status == 400 and "Can't connect" in err.value.message


def test_interactive_annotating_returns_data_and_raises_on_errors():
    answers = iter([{"data": {"result": [1], "score": 0.9}}, {"errors": ["Model is not set to be used"]}])
    fake = FakeLabelStudio(
        {("POST", "/api/ml/3/interactive-annotating"): lambda r: httpx.Response(200, json=next(answers))}
    )
    with fake.client() as ls:
        assert ls.interactive_annotating(3, 12, {"result": []}) == {"result": [1], "score": 0.9}
        with pytest.raises(LabelStudioError) as err:
            ls.interactive_annotating(3, 12)
    assert err.value.status == 200 and "not set" in err.value.message
    assert body(fake.requests[0]) == {"task": 12, "context": {"result": []}}


def test_annotation_task_and_webhook_calls():
    routes = {
        ("POST", "/api/tasks/12/annotations/"): lambda r: httpx.Response(201, json={"id": 40, **body(r)}),
        ("PATCH", "/api/annotations/40/"): lambda r: httpx.Response(200, json={"id": 40, **body(r)}),
        ("DELETE", "/api/annotations/40/"): lambda r: httpx.Response(204),
        ("DELETE", "/api/tasks/12/"): lambda r: httpx.Response(204),
        ("POST", "/api/webhooks/"): lambda r: httpx.Response(201, json={"id": 2, **body(r)}),
        ("GET", "/api/predictions/"): lambda r: httpx.Response(200, json=[{"id": 1, "task": 12}]),
        ("GET", "/api/tasks/12/"): lambda r: httpx.Response(200, json={"id": 12}),
    }
    fake = FakeLabelStudio(routes)
    with fake.client() as ls:
        annotation = ls.create_annotation(12, [{"type": "choices"}], ground_truth=True)
        assert annotation["ground_truth"] is True
        assert ls.update_annotation(40, result=[])["result"] == []
        assert ls.delete_annotation(40) is None
        assert ls.delete_task(12) is None
        hook = ls.create_webhook(5, "http://127.0.0.1:8000/hook", {"X-Key": "k"})
        assert (hook["send_payload"], hook["send_for_all_actions"], hook["headers"]) == (True, True, {"X-Key": "k"})
        assert ls.predictions(12) == [{"id": 1, "task": 12}]
        assert ls.task(12) == {"id": 12}
    assert fake.requests[5].url.params["task"] == "12"
