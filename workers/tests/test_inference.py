"""workers.inference, the public function other apps call, against a live worker endpoint with a fake engine."""

import pytest

from batchsite.errors import ApiError
from jobs.tests.factories import CHAT_MODEL
from workers import inference
from workers.engine.types import Choice, EngineError, Generation, TokenLogprob
from workers.realtime import server as realtime

from .test_realtime import FakeEngine, live_worker  # noqa: F401


class ScoringEngine(FakeEngine):
    """Answers each chat with its last message, with logprobs; refuses 'too long'."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.submitted = []

    def submit(self, item, stream=False):
        self.submitted.append(item)
        return item

    def next_event(self, request, timeout):
        text = request.chat[-1]["content"]
        if text == "too long":
            return "error", EngineError("The prompt is too long.", param="messages", code="context_length_exceeded")
        wants_logprobs = request.sampling.get("logprobs") is not None
        logprobs = [TokenLogprob(token=text, logprob=-0.5, bytes=[])] if wants_logprobs else None
        return "done", Generation(
            prompt_tokens=2, choices=[Choice(text=text, completion_tokens=1, finish_reason="stop", logprobs=logprobs)]
        )


@pytest.fixture
def scoring_worker(live_worker, monkeypatch):  # noqa: F811
    engine = ScoringEngine()
    monkeypatch.setattr(realtime.engine_host, "_engine", engine)
    return engine


def _chat(text, **extra):
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 4, **extra}


def test_chat_answers_every_request_in_order_with_logprobs(scoring_worker):
    results = inference.chat([_chat("a", logprobs=True), _chat("b"), _chat("c")], model=CHAT_MODEL)
    assert [r.text for r in results] == ["a", "b", "c"]
    assert results[0].token_logprobs == [("a", -0.5)]
    assert results[1].token_logprobs == []
    assert results[0].usage["total_tokens"] == 3
    # All three went into the engine before any result was awaited.
    assert [i.chat[-1]["content"] for i in scoring_worker.submitted] == ["a", "b", "c"]


def test_a_request_the_engine_refuses_fails_alone(scoring_worker):
    results = inference.chat([_chat("ok"), _chat("too long")], model=CHAT_MODEL)
    assert results[0].text == "ok" and results[0].error is None
    assert results[1].text is None
    assert results[1].error["code"] == "context_length_exceeded"


def test_bad_parameters_are_400_naming_the_request(scoring_worker):
    with pytest.raises(ApiError) as raised:
        inference.chat([_chat("ok"), _chat("x", temperature=9)], model=CHAT_MODEL)
    assert raised.value.status_code == 400
    assert raised.value.param == "requests.1.temperature"


def test_no_online_worker_is_503(chat_model):
    with pytest.raises(ApiError) as raised:
        inference.chat([_chat("a")], model=CHAT_MODEL)
    assert raised.value.status_code == 503
    assert raised.value.code == "model_not_loaded"


def test_unknown_model_is_404(chat_model):
    with pytest.raises(ApiError) as raised:
        inference.chat([_chat("a")], model="nope")
    assert raised.value.status_code == 404


def test_empty_input_asks_nobody():
    assert inference.chat([], model=CHAT_MODEL) == []
    assert inference.embed([], model="any") == []
