"""Validation of a batch input file: jobs.services.batch_validate over jobs.validation, with the
model registry's answer (workers.selectors.model_problem) as the worker passes it."""

import io

import pytest

from jobs.models import Batch
from jobs.services import batch_validate
from jobs.validation import MAX_CUSTOM_ID_CHARS, READ_BLOCK, validate_input
from workers.models import RegisteredModel
from workers.selectors import model_problem

from .factories import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    chat_request,
    completion_request,
    embedding_request,
    make_batch,
)


def validate(user, lines, endpoint=CHAT):
    batch = make_batch(user, lines, endpoint=endpoint)
    ok = batch_validate(batch=batch, model_problem=lambda name: model_problem(name, endpoint))
    batch.refresh_from_db()
    assert ok == (batch.status == "in_progress")
    return batch


def only_error(batch):
    assert batch.status == "failed"
    assert batch.failed_at is not None
    assert len(batch.errors) == 1, batch.errors
    error = batch.errors[0]
    assert set(error) == {"code", "message", "param", "line"}
    assert error["message"]
    return error


@pytest.fixture(autouse=True)
def models(chat_model, embedding_model):
    return chat_model, embedding_model


def test_a_valid_file_moves_the_batch_to_in_progress(user):
    batch = validate(user, [chat_request("a"), chat_request("b"), chat_request("c")])
    assert batch.status == "in_progress"
    assert batch.total_requests == 3
    assert batch.model == "tiny-llama"
    assert batch.in_progress_at is not None
    assert batch.errors is None


def test_blank_lines_are_skipped_and_do_not_count(user):
    batch = validate(user, [chat_request("a"), "", "   ", chat_request("b")])
    assert batch.status == "in_progress"
    assert batch.total_requests == 2


def test_a_failed_batch_shows_its_errors_to_the_user(api, user):
    batch = validate(user, [chat_request("a"), "{oops"])
    body = api.get(f"/v1/batches/{batch.id}").json()
    assert body["status"] == "failed"
    assert isinstance(body["failed_at"], int)
    assert body["errors"]["object"] == "list"
    assert body["errors"]["data"] == [
        {"code": "invalid_json_line", "message": body["errors"]["data"][0]["message"], "param": None, "line": 2}
    ]
    assert body["request_counts"]["total"] == 0


def test_invalid_json_line_names_its_line(user):
    error = only_error(validate(user, [chat_request("a"), chat_request("b"), "not json"]))
    assert error["code"] == "invalid_json_line"
    assert error["line"] == 3


def test_line_numbers_count_blank_lines(user):
    error = only_error(validate(user, [chat_request("a"), "", "[1, 2]"]))
    assert error["code"] == "invalid_json_line"
    assert error["line"] == 3


def test_a_line_that_is_not_utf8_is_invalid_json(user):
    error = only_error(validate(user, [b'{"custom_id": "\xff\xfe"}']))
    assert error["code"] == "invalid_json_line"


@pytest.mark.parametrize("field", ["custom_id", "method", "url", "body"])
def test_missing_top_level_field(user, field):
    request = chat_request("a")
    del request[field]
    error = only_error(validate(user, [request]))
    assert error == {**error, "code": "missing_required_parameter", "param": field, "line": 1}


@pytest.mark.parametrize(
    ("endpoint", "make", "field"),
    [
        (CHAT, chat_request, "messages"),
        (COMPLETIONS, completion_request, "prompt"),
        (EMBEDDINGS, embedding_request, "input"),
    ],
)
def test_missing_body_field_of_the_endpoint(user, endpoint, make, field):
    request = make("a")
    del request["body"][field]
    error = only_error(validate(user, [request], endpoint=endpoint))
    assert error == {**error, "code": "missing_required_parameter", "param": f"body.{field}", "line": 1}


def test_duplicate_custom_id(user):
    error = only_error(validate(user, [chat_request("a"), chat_request("b"), chat_request("a")]))
    assert error == {**error, "code": "duplicate_custom_id", "param": "custom_id", "line": 3}
    assert "'a'" in error["message"]


@pytest.mark.parametrize("custom_id", ["", 7, None])
def test_custom_id_must_be_a_non_empty_string(user, custom_id):
    error = only_error(validate(user, [chat_request(custom_id)]))
    assert error == {**error, "code": "invalid_value", "param": "custom_id"}


def test_method_must_be_post(user):
    error = only_error(validate(user, [{**chat_request("a"), "method": "GET"}]))
    assert error == {**error, "code": "invalid_method", "param": "method", "line": 1}


def test_url_must_match_the_batch_endpoint(user):
    request = {**chat_request("b"), "url": "/v1/completions"}
    error = only_error(validate(user, [chat_request("a"), request]))
    assert error == {**error, "code": "invalid_url", "param": "url", "line": 2}


def test_body_must_be_an_object(user):
    error = only_error(validate(user, [{**chat_request("a"), "body": "hi"}]))
    assert error == {**error, "code": "invalid_value", "param": "body"}


def test_missing_model_is_an_invalid_request(user):
    request = chat_request("a")
    del request["body"]["model"]
    error = only_error(validate(user, [request]))
    assert error == {**error, "code": "invalid_request", "param": "body.model", "line": 1}


def test_unknown_model_is_not_found(user):
    error = only_error(validate(user, [chat_request("a", model="gpt-4o")]))
    assert error == {**error, "code": "model_not_found", "param": "body.model", "line": 1}
    assert "gpt-4o" in error["message"]


def test_inactive_model_is_not_found(user):
    RegisteredModel.objects.filter(name="tiny-llama").update(is_active=False)
    assert only_error(validate(user, [chat_request("a")]))["code"] == "model_not_found"


def test_embedding_model_cannot_serve_chat(user):
    error = only_error(validate(user, [chat_request("a", model="tiny-embed")]))
    assert error == {**error, "code": "model_not_supported", "param": "body.model"}


def test_generative_model_cannot_serve_embeddings(user):
    error = only_error(validate(user, [embedding_request("a", model="tiny-llama")], endpoint=EMBEDDINGS))
    assert error == {**error, "code": "model_not_supported", "param": "body.model"}


def test_all_requests_must_name_the_same_model(user):
    RegisteredModel.objects.create(name="other-llama", path="/nonexistent", runner="generate")
    error = only_error(validate(user, [chat_request("a"), chat_request("b", model="other-llama")]))
    assert error == {**error, "code": "mismatched_model", "param": "body.model", "line": 2}


def test_streaming_is_unsupported(user):
    error = only_error(validate(user, [chat_request("a", stream=True)]))
    assert error == {**error, "code": "streaming_unsupported", "param": "body.stream", "line": 1}


def test_stream_false_is_accepted(user):
    assert validate(user, [chat_request("a", stream=False)]).status == "in_progress"


def test_too_many_requests(user, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "MAX_BATCH_REQUESTS": 2}
    assert validate(user, [chat_request("a"), chat_request("b")]).status == "in_progress"
    error = only_error(validate(user, [chat_request("a"), chat_request("b"), chat_request("c")]))
    assert error["code"] == "too_many_requests"
    assert error["line"] is None


def test_line_too_long(user, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "MAX_LINE_BYTES": 200}
    error = only_error(validate(user, [chat_request("a"), chat_request("b", content="x" * 300)]))
    assert error == {**error, "code": "line_too_long", "line": 2}


def test_every_bad_line_is_reported(user):
    batch = validate(user, ["nope", chat_request("b", model="gpt-4o"), {**chat_request("c"), "method": "PUT"}])
    assert batch.status == "failed"
    assert [(e["code"], e["line"]) for e in batch.errors] == [
        ("invalid_json_line", 1),
        ("model_not_found", 2),
        ("invalid_method", 3),
    ]


def test_reported_errors_are_capped(user):
    batch = validate(user, ["nope"] * 150)
    assert batch.status == "failed"
    assert len(batch.errors) == 100
    assert batch.errors[-1]["line"] == 100


def test_validation_leaves_a_finished_batch_alone(user):
    batch = make_batch(user, ["nope"])
    Batch.objects.filter(pk=batch.pk).update(status="cancelled")
    batch_validate(batch=batch, model_problem=lambda name: model_problem(name, CHAT))
    batch.refresh_from_db()
    assert batch.status == "cancelled"
    assert batch.errors is None


# -- bounded input ---------------------------------------------------------------


class CountingStream(io.BytesIO):
    """A stream that remembers the longest read it was asked for."""

    def __init__(self, data):
        super().__init__(data)
        self.largest_read = 0

    def readline(self, size=-1):
        line = super().readline(size)
        self.largest_read = max(self.largest_read, len(line))
        return line

    def __iter__(self):
        raise AssertionError("lines must be read with a bound, not by iterating")


def test_a_line_without_newline_is_read_only_up_to_the_limit(settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "MAX_LINE_BYTES": 1000}
    stream = CountingStream(b"x" * (20 * READ_BLOCK))
    result = validate_input(stream, CHAT, lambda name: None)
    assert [(e["code"], e["line"]) for e in result.errors] == [("line_too_long", 1)]
    assert result.total == 1
    assert stream.largest_read <= READ_BLOCK


def test_lines_after_an_overlong_line_keep_their_numbers(user, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "MAX_LINE_BYTES": 300}
    batch = validate(user, [chat_request("a"), chat_request("b", content="x" * 5000), "nope", chat_request("c")])
    assert [(e["code"], e["line"]) for e in batch.errors] == [("line_too_long", 2), ("invalid_json_line", 3)]


def test_a_custom_id_at_the_limit_is_accepted(user):
    assert validate(user, [chat_request("c" * MAX_CUSTOM_ID_CHARS)]).status == "in_progress"


def test_a_custom_id_over_the_limit_is_refused_with_its_line(user):
    error = only_error(validate(user, [chat_request("a"), chat_request("c" * 1000)]))
    assert error == {**error, "code": "invalid_value", "param": "custom_id", "line": 2}
    assert "512" in error["message"]


def test_a_line_that_makes_a_validator_raise_is_a_line_error(user, monkeypatch):
    from jobs import validation

    def broken(messages):
        raise KeyError("surprise")

    monkeypatch.setattr(validation, "_messages_problem", broken)
    error = only_error(validate(user, [chat_request("a")]))
    assert error == {**error, "code": "invalid_json_line", "line": 1}


def test_deeply_nested_json_is_a_line_error(user):
    error = only_error(validate(user, [chat_request("a"), "[" * 100_000 + "]" * 100_000]))
    assert error == {**error, "code": "invalid_json_line", "line": 2}


# -- messages as OpenAI checks them ------------------------------------------------


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant", "tool", "function"])
def test_every_openai_role_is_accepted(user, role):
    request = chat_request("a")
    request["body"]["messages"] = [{"role": role, "content": "hi"}]
    assert validate(user, [request]).status == "in_progress"


def test_content_parts_and_an_assistant_tool_call_are_accepted(user):
    request = chat_request("a")
    request["body"]["messages"] = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    assert validate(user, [request]).status == "in_progress"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "wizard", "content": "hi"}], "body.messages.0.role"),
        ([{"content": "hi"}], "body.messages.0.role"),
        ([{"role": "user", "content": "a"}, {"role": 3, "content": "b"}], "body.messages.1.role"),
        ([{"role": "user"}], "body.messages.0.content"),
        ([{"role": "user", "content": 42}], "body.messages.0.content"),
        ([{"role": "user", "content": {"text": "hi"}}], "body.messages.0.content"),
        ([{"role": "user", "content": ["hi"]}], "body.messages.0.content.0"),
        ([{"role": "user", "content": [{"text": "hi"}]}], "body.messages.0.content.0"),
        (["hi"], "body.messages.0"),
    ],
)
def test_a_bad_message_is_a_line_error(user, messages, param):
    request = chat_request("a")
    request["body"]["messages"] = messages
    error = only_error(validate(user, [chat_request("ok"), request]))
    assert error == {**error, "code": "invalid_value", "param": param, "line": 2}


# -- the malformed-input corpus: every line is a per-line error, never an exception ---

MALFORMED_LINES = [
    ("not json", "invalid_json_line"),
    ("{", "invalid_json_line"),
    ("[1, 2]", "invalid_json_line"),
    ('"a string"', "invalid_json_line"),
    ("null", "invalid_json_line"),
    ("NaN", "invalid_json_line"),
    (b"\xff\xfe\x00", "invalid_json_line"),
    (b'{"custom_id": "\xc3"}', "invalid_json_line"),
    ("[" * 50_000, "invalid_json_line"),
    ('{"a": ' * 50_000, "invalid_json_line"),
    ('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}', "missing_required_parameter"),
    ({**chat_request("a"), "custom_id": ["a"]}, "invalid_value"),
    ({**chat_request("a"), "custom_id": {"a": 1}}, "invalid_value"),
    ({**chat_request("a"), "custom_id": "x" * 513}, "invalid_value"),
    ({**chat_request("a"), "method": None}, "invalid_method"),
    ({**chat_request("a"), "method": ["POST"]}, "invalid_method"),
    ({**chat_request("a"), "url": {"u": 1}}, "invalid_url"),
    ({**chat_request("a"), "body": []}, "invalid_value"),
    ({**chat_request("a"), "body": "text"}, "invalid_value"),
    ({**chat_request("a"), "body": {"model": ["tiny-llama"], "messages": []}}, "invalid_request"),
    ({**chat_request("a"), "body": {"model": "tiny-llama\x00", "messages": [{"role": "user", "content": "x"}]}}, None),
    ({**chat_request("a"), "body": {"model": "m" * 100_000, "messages": [{"role": "user", "content": "x"}]}}, None),
    (
        {**chat_request("a"), "body": {"model": "tiny-llama", "messages": [{"role": "root", "content": "x"}]}},
        "invalid_value",
    ),
    (
        {**chat_request("a"), "body": {"model": "tiny-llama", "messages": [{"role": "user", "content": 1}]}},
        "invalid_value",
    ),
    ({**chat_request("a"), "body": {"model": "tiny-llama", "messages": [None]}}, "invalid_value"),
    (
        {
            **chat_request("a"),
            "body": {"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "stream": 1},
        },
        "streaming_unsupported",
    ),
]


@pytest.mark.parametrize(("line", "code"), MALFORMED_LINES, ids=[f"case{i}" for i in range(len(MALFORMED_LINES))])
def test_malformed_input_corpus(user, line, code):
    batch = validate(user, [chat_request("first"), line, chat_request("last")])
    error = only_error(batch)
    assert error["line"] == 2
    if code is not None:
        assert error["code"] == code


@pytest.mark.parametrize("messages", [[], "hi", None])
def test_messages_that_are_no_list_fail_as_their_request_not_the_batch(user, messages):
    request = chat_request("a")
    request["body"]["messages"] = messages
    assert validate(user, [request]).status == "in_progress"
