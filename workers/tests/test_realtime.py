"""The realtime views with the worker call faked, and the worker's endpoint with a fake engine."""

import json
import os
import socket

import pytest
from django.utils import timezone

from jobs.tests.factories import CHAT_MODEL, EMBEDDING_MODEL, make_client, make_user
from workers.engine.types import Choice, Generation
from workers.models import Worker
from workers.realtime import client as realtime_client
from workers.realtime import server as realtime

CHAT_BODY = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@pytest.fixture
def api(user):
    return make_client(user)


def make_worker(model=CHAT_MODEL, state=Worker.State.IDLE, url="http://127.0.0.1:9", **fields):
    now = timezone.now()
    return Worker.objects.create(
        name=f"{socket.gethostname()}:{os.getpid()}:{model}",
        hostname=socket.gethostname(),
        pid=os.getpid(),
        state=state,
        current_model=model,
        realtime_url=url,
        realtime_token="secret",
        started_at=now,
        last_seen=now,
        **fields,
    )


@pytest.fixture
def worker_says(monkeypatch):
    """Replaces the call to the worker by the given answer lines; records what was sent."""
    sent = []

    def fake(lines):
        class FakeCall:
            def __init__(self, worker, kind, body, timeout, swap=False):
                sent.append({"worker": worker, "kind": kind, "body": body, "timeout": timeout, "swap": swap})

            def __iter__(self):
                return iter(lines)

        monkeypatch.setattr(realtime_client, "WorkerCall", FakeCall)
        return sent

    return fake


def chat_body(text="Hello"):
    return {
        "object": "chat.completion",
        "model": CHAT_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }


def test_chat_completion_is_relayed_from_the_worker_holding_the_model(api, chat_model, worker_says):
    make_worker()
    sent = worker_says([{"done": chat_body()}])
    response = api.post("/v1/chat/completions", CHAT_BODY, format="json")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello"
    assert sent[0]["kind"] == "chat"
    assert sent[0]["timeout"] == 60


def test_without_model_the_loaded_model_answers(api, chat_model, worker_says):
    make_worker()
    sent = worker_says([{"done": chat_body()}])
    body = {k: v for k, v in CHAT_BODY.items() if k != "model"}
    assert api.post("/v1/chat/completions", body, format="json").status_code == 200
    assert sent[0]["body"]["model"] == CHAT_MODEL


def test_no_worker_with_the_model_gives_503_with_retry_after(api, chat_model, embedding_model):
    make_worker(model=EMBEDDING_MODEL)
    response = api.post("/v1/chat/completions", CHAT_BODY, format="json")
    assert response.status_code == 503
    assert response["Retry-After"]
    assert response.json()["error"]["code"] == "model_not_loaded"


def test_stale_or_loading_workers_are_not_used(api, chat_model):
    make_worker(state=Worker.State.LOADING)
    stale = make_worker(model=CHAT_MODEL + "x")
    Worker.objects.filter(pk=stale.pk).update(current_model=CHAT_MODEL, last_seen=timezone.now().replace(year=2000))
    assert api.post("/v1/chat/completions", CHAT_BODY, format="json").status_code == 503


def test_unknown_model_is_404(api, chat_model):
    response = api.post("/v1/chat/completions", {**CHAT_BODY, "model": "nope"}, format="json")
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "model"


def test_worker_timeout_gives_504(api, chat_model, worker_says):
    make_worker()
    worker_says([{"error": {"status": 504, "code": "timeout", "message": "timed out", "param": None}}])
    response = api.post("/v1/chat/completions", {**CHAT_BODY, "timeout": 0.5}, format="json")
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"


def test_the_workers_400_is_relayed_in_the_envelope(api, chat_model, worker_says):
    make_worker()
    error = {"status": 400, "code": "context_length_exceeded", "message": "too long", "param": "messages"}
    worker_says([{"error": error}])
    response = api.post("/v1/chat/completions", CHAT_BODY, format="json")
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "too long",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/chat/completions", {**CHAT_BODY, "temperature": 9}, "temperature"),
        ("/v1/chat/completions", {"messages": "hello"}, "messages"),
        ("/v1/chat/completions", {**CHAT_BODY, "guided_choice": "yes"}, "guided_choice"),
        ("/v1/completions", {"prompt": None}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ("/v1/embeddings", {"input": {"a": 1}}, "input"),
        ("/v1/embeddings", {"input": "hi", "encoding_format": "hex"}, "encoding_format"),
        ("/v1/inference", {"prompt": "hi", "top_p": 2}, "top_p"),
    ],
)
def test_bad_bodies_are_400_before_any_worker_is_asked(api, chat_model, path, body, param):
    """No worker is online: the web checks the body itself rather than answering 503."""
    response = api.post(path, body, format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_bad_timeout_and_missing_messages_are_400(api, chat_model):
    make_worker()
    assert api.post("/v1/chat/completions", {**CHAT_BODY, "timeout": -1}, format="json").status_code == 400
    response = api.post("/v1/chat/completions", {"model": CHAT_MODEL}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


def test_requires_an_api_key(client, chat_model):
    response = client.post("/v1/chat/completions", CHAT_BODY, content_type="application/json")
    assert response.status_code == 401
    response = client.post(
        "/v1/inference", CHAT_BODY, content_type="application/json", HTTP_AUTHORIZATION="Bearer wrong"
    )
    assert response.status_code == 401


def test_stream_is_relayed_as_server_sent_events(api, chat_model, worker_says):
    make_worker()
    chunks = [{"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": t}}]} for t in "ab"]
    worker_says([{"chunk": c} for c in chunks] + [{"done": None}])
    response = api.post("/v1/chat/completions", {**CHAT_BODY, "stream": True}, format="json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    text = b"".join(response.streaming_content).decode()
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e]
    assert [json.loads(e) for e in events[:-1]] == chunks
    assert events[-1] == "[DONE]"


def test_inference_answers_text_usage_and_latency(api, chat_model, worker_says):
    make_worker()
    sent = worker_says([{"done": chat_body("yes")}])
    response = api.post(
        "/v1/inference", {"messages": CHAT_BODY["messages"], "json_schema": {"type": "object"}}, format="json"
    )
    assert response.status_code == 200
    answer = response.json()
    assert answer["text"] == "yes"
    assert answer["model"] == CHAT_MODEL
    assert answer["finish_reason"] == "length"
    assert answer["usage"]["total_tokens"] == 7
    assert isinstance(answer["latency_ms"], int)
    assert sent[0]["body"]["guided_json"] == {"type": "object"}


class FakeEngine:
    def __init__(self, name=CHAT_MODEL, engine_args=None):
        self.name = name
        self.engine_args = engine_args
        self.cancelled = []
        self.shut_down = False

    def shutdown(self):
        self.shut_down = True

    def submit(self, item, stream=False):
        return item

    def next_event(self, request, timeout):
        if request.sampling.get("max_tokens", 0) > 100:
            raise TimeoutError
        return "done", Generation(
            prompt_tokens=2, choices=[Choice(text="ok", completion_tokens=1, finish_reason="stop")]
        )

    def cancel(self, request):
        self.cancelled.append(request)


@pytest.fixture
def live_worker(chat_model, monkeypatch):
    engine = FakeEngine()
    monkeypatch.setattr(realtime.engine_host, "_engine", engine)
    monkeypatch.setattr(realtime.engine_host, "_hold_until", 0.0)
    monkeypatch.setattr(realtime.engine_host, "_new_engine", FakeEngine)
    monkeypatch.setattr(realtime.engine_host, "_register_finalizer", lambda: None)
    realtime.start()
    worker = make_worker(url=realtime.url())
    Worker.objects.filter(pk=worker.pk).update(realtime_token=realtime.token())
    return engine


def test_worker_endpoint_answers_through_the_web(api, live_worker):
    response = api.post("/v1/completions", {"model": CHAT_MODEL, "prompt": "Hi"}, format="json")
    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == "ok"


def test_worker_endpoint_aborts_on_timeout(api, live_worker):
    body = {"model": CHAT_MODEL, "prompt": "Hi", "max_tokens": 1000, "timeout": 1}
    response = api.post("/v1/completions", body, format="json")
    assert response.status_code == 504
    assert live_worker.cancelled


def test_worker_endpoint_needs_its_token(api, live_worker):
    Worker.objects.update(realtime_token="wrong")
    response = api.post("/v1/completions", {"model": CHAT_MODEL, "prompt": "Hi"}, format="json")
    assert response.status_code == 503


def test_endpoint_the_model_does_not_serve_is_400(api, chat_model, embedding_model):
    response = api.post("/v1/embeddings", {"model": CHAT_MODEL, "input": "x"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_not_supported"


# -- on-demand swaps ------------------------------------------------------------


@pytest.fixture
def swaps_allowed(settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "REALTIME_SWAP": True}


def test_with_swaps_allowed_an_idle_worker_is_asked_to_load_the_model(
    api, chat_model, embedding_model, worker_says, swaps_allowed
):
    make_worker(model="busy-model", state=Worker.State.PROCESSING)
    idle = make_worker(model=EMBEDDING_MODEL)
    sent = worker_says([{"done": chat_body()}])
    assert api.post("/v1/chat/completions", CHAT_BODY, format="json").status_code == 200
    assert sent[0]["worker"] == idle
    assert sent[0]["swap"] is True


def test_a_worker_already_loading_the_model_gets_the_request(api, chat_model, worker_says, swaps_allowed):
    make_worker(model="other-model")
    loading = make_worker(model=CHAT_MODEL, state=Worker.State.LOADING)
    sent = worker_says([{"done": chat_body()}])
    assert api.post("/v1/chat/completions", CHAT_BODY, format="json").status_code == 200
    assert sent[0]["worker"] == loading


def test_a_worker_running_a_batch_is_asked_when_no_other_is_online(api, chat_model, worker_says, swaps_allowed):
    busy = make_worker(model="busy-model", state=Worker.State.PROCESSING)
    sent = worker_says([{"done": chat_body()}])
    assert api.post("/v1/chat/completions", CHAT_BODY, format="json").status_code == 200
    assert sent[0]["worker"] == busy and sent[0]["swap"] is True


def test_a_worker_holding_the_model_is_used_without_a_swap(api, chat_model, worker_says, swaps_allowed):
    make_worker()
    sent = worker_says([{"done": chat_body()}])
    assert api.post("/v1/chat/completions", CHAT_BODY, format="json").status_code == 200
    assert sent[0]["swap"] is False


def test_without_a_model_name_nothing_is_swapped_in(api, chat_model, swaps_allowed):
    body = {k: v for k, v in CHAT_BODY.items() if k != "model"}
    response = api.post("/v1/chat/completions", body, format="json")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_not_loaded"


# The worker's thread reads the model registry: no test transaction may lock it.
@pytest.mark.django_db(transaction=True)
def test_the_worker_loads_the_model_and_answers(api, live_worker, swaps_allowed):
    from workers.models import RegisteredModel

    RegisteredModel.objects.create(name="other-llama", path="/nonexistent", runner="generate")
    response = api.post("/v1/completions", {"model": "other-llama", "prompt": "Hi"}, format="json")
    assert response.status_code == 200
    assert response.json()["model"] == "other-llama"
    assert realtime.engine_host.loaded_model_name() == "other-llama"
    assert live_worker.shut_down
    assert realtime.engine_host.hold_seconds_left() > 0


# The worker's thread reads the model registry: no test transaction may lock it.
@pytest.mark.django_db(transaction=True)
def test_a_swap_that_cannot_happen_in_time_is_504(api, live_worker, swaps_allowed):
    from workers.models import RegisteredModel

    RegisteredModel.objects.create(name="other-llama", path="/nonexistent", runner="generate")
    with realtime.engine_host.in_use(CHAT_MODEL):  # a long request keeps the old model busy
        body = {"model": "other-llama", "prompt": "Hi", "timeout": 0.5}
        response = api.post("/v1/completions", body, format="json")
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    assert realtime.engine_host.loaded_model_name() == CHAT_MODEL


def test_without_the_swap_flag_the_worker_refuses_another_model(api, live_worker):
    from workers.models import RegisteredModel

    RegisteredModel.objects.create(name="other-llama", path="/nonexistent", runner="generate")
    Worker.objects.update(current_model="other-llama")  # the web thinks so; the worker knows better
    response = api.post("/v1/completions", {"model": "other-llama", "prompt": "Hi"}, format="json")
    assert response.status_code == 503
    assert realtime.engine_host.loaded_model_name() == CHAT_MODEL


def test_an_unexpected_worker_error_reaches_the_client_without_its_text(api, live_worker, monkeypatch, caplog):
    def broken(request, timeout):
        raise RuntimeError("secret detail: /srv/models/private-llama token=abc")

    monkeypatch.setattr(live_worker, "next_event", broken)
    response = api.post("/v1/completions", {"model": CHAT_MODEL, "prompt": "Hi"}, format="json")
    assert response.status_code == 500
    error = response.json()["error"]
    assert "secret detail" not in json.dumps(error)
    assert error["code"] == "engine_error"
    request_id = error["message"].split("request id ")[1].rstrip(").")
    assert request_id.startswith("req_")
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and "secret detail" in logged[0].exc_text


# -- realtime requests in flight per owner ----------------------------------------


def test_realtime_requests_at_once_are_limited_per_owner(api, user, chat_model, worker_says, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "MAX_CONCURRENT_REALTIME": 1}
    make_worker()
    chunk = {"object": "chat.completion.chunk", "choices": []}
    worker_says([{"chunk": chunk}, {"chunk": chunk}, {"done": None}])
    streaming = api.post("/v1/chat/completions", {**CHAT_BODY, "stream": True}, format="json")
    assert streaming.status_code == 200

    # The stream still holds the owner's one slot.
    refused = api.post("/v1/chat/completions", CHAT_BODY, format="json")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "concurrent_requests_limit"
    assert refused["Retry-After"] == "1"
    other = make_client(make_user("other-owner"))
    worker_says([{"done": chat_body()}])
    assert other.post("/v1/chat/completions", CHAT_BODY, format="json").status_code == 200

    b"".join(streaming.streaming_content)
    streaming.close()
    assert api.post("/v1/chat/completions", CHAT_BODY, format="json").status_code == 200
    assert api.post("/v1/chat/completions", CHAT_BODY, format="json").status_code == 200


def test_a_failed_realtime_request_gives_its_slot_back(api, chat_model, worker_says, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "MAX_CONCURRENT_REALTIME": 1}
    make_worker()
    worker_says([{"error": {"status": 400, "code": "invalid_value", "message": "bad", "param": None}}])
    assert api.post("/v1/chat/completions", CHAT_BODY, format="json").status_code == 400
    worker_says([{"done": chat_body()}])
    assert api.post("/v1/chat/completions", CHAT_BODY, format="json").status_code == 200


def test_a_chat_message_with_a_role_openai_refuses_is_a_400_before_any_worker(api, chat_model):
    body = {**CHAT_BODY, "messages": [{"role": "wizard", "content": "Hi"}]}
    response = api.post("/v1/chat/completions", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages.0.role"


def observed(endpoint, status):
    """How many requests the latency histogram counted for endpoint and status."""
    from prometheus_client import REGISTRY

    return (
        REGISTRY.get_sample_value(
            "vllm_batch_realtime_request_seconds_count", {"endpoint": endpoint, "status": str(status)}
        )
        or 0
    )


def test_each_realtime_request_is_timed_by_endpoint_and_status(api, chat_model, worker_says):
    make_worker()
    worker_says([{"done": chat_body()}])
    ok, missing = observed("/v1/chat/completions", 200), observed("/v1/chat/completions", 400)
    assert api.post("/v1/chat/completions", CHAT_BODY, format="json").status_code == 200
    assert api.post("/v1/chat/completions", {"model": CHAT_MODEL}, format="json").status_code == 400
    assert observed("/v1/chat/completions", 200) == ok + 1
    assert observed("/v1/chat/completions", 400) == missing + 1


def test_a_stream_is_timed_when_it_has_been_sent(api, chat_model, worker_says):
    make_worker()
    worker_says([{"chunk": {"object": "chat.completion.chunk", "choices": []}}, {"done": None}])
    before = observed("/v1/chat/completions", 200)
    response = api.post("/v1/chat/completions", {**CHAT_BODY, "stream": True}, format="json")
    assert observed("/v1/chat/completions", 200) == before
    b"".join(response.streaming_content)
    assert observed("/v1/chat/completions", 200) == before + 1


def test_a_failing_metric_does_not_fail_the_request(api, chat_model, worker_says, monkeypatch):
    from workers.realtime import latency

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(latency.REQUEST_SECONDS, "labels", broken)
    make_worker()
    worker_says([{"done": chat_body()}])
    assert api.post("/v1/chat/completions", CHAT_BODY, format="json").status_code == 200


def test_a_request_naming_no_model_goes_to_a_worker_whose_model_serves_it(
    api, chat_model, embedding_model, worker_says
):
    make_worker(model=embedding_model.name)
    sent = worker_says([{"done": chat_body()}])
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    response = api.post("/v1/chat/completions", {**body, "model": ""}, format="json")
    # Only an embedding model is loaded: chat is not sent to it.
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_not_loaded"
    assert "/v1/chat/completions" in response.json()["error"]["message"]
    assert sent == []
    make_worker(model=CHAT_MODEL)
    assert api.post("/v1/chat/completions", {**body, "model": ""}, format="json").status_code == 200
    assert sent[0]["body"]["model"] == CHAT_MODEL
