"""workers.runner.process_batch with a fake engine: claim, validate, run, save per chunk, finalize."""

import base64
import datetime
import json
import struct
from collections import Counter
from contextlib import contextmanager

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from jobs.models import Batch, BatchResult, File
from jobs.tests.factories import (
    COMPLETIONS,
    EMBEDDINGS,
    chat_request,
    completion_request,
    custom_ids,
    embedding_request,
    make_batch,
    make_client,
    read_jsonl,
    save_results,
)
from workers import state
from workers.engine.types import Choice, EngineDead, EngineError, Generation
from workers.models import RegisteredModel
from workers.runner import process_batch, validate_batch

from .fakes import echo

HOLDER = "test:1"


def run(batch):
    outcome = process_batch(batch.pk, holder=HOLDER)
    batch.refresh_from_db()
    return outcome


def output_and_errors(batch):
    return read_jsonl(batch.output_file_id), read_jsonl(batch.error_file_id)


def assert_each_custom_id_once(batch, expected):
    output, errors = output_and_errors(batch)
    counts = Counter(custom_ids(output) + custom_ids(errors))
    assert counts == Counter(expected), counts


def in_progress(batch):
    """Validates `batch` as the worker would before it runs."""
    assert validate_batch(batch, None)
    batch.refresh_from_db()
    return batch


@pytest.fixture(autouse=True)
def chunks_of_two(small_chunks):
    pass


# -- a batch that runs to the end --------------------------------------------


def test_completed_batch_answers_every_request_once(user, chat_model, engine):
    ids = [f"req-{i}" for i in range(5)]
    batch = make_batch(user, [chat_request(i, content=f"question {i}") for i in ids])

    assert run(batch) == "completed"

    assert batch.status == "completed"
    assert batch.model == "tiny-llama"
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert getattr(batch, stamp) is not None, stamp
    assert batch.error_file_id is None
    assert (batch.total_requests, batch.completed_requests, batch.failed_requests) == (5, 5, 0)
    assert batch.claimed_by == ""
    assert_each_custom_id_once(batch, ids)
    assert engine.fake().lines == [1, 2, 3, 4, 5]
    assert not BatchResult.objects.filter(batch=batch).exists()


def test_output_lines_have_openais_batch_shape(user, chat_model, engine):
    batch = make_batch(user, [chat_request("a", content="hi there"), chat_request("b", content="bye")])
    run(batch)
    output = read_jsonl(batch.output_file_id)
    assert custom_ids(output) == ["a", "b"]  # in input order
    line = output[0]
    assert set(line) == {"id", "custom_id", "response", "error"}
    assert line["id"].startswith("batch_req_")
    assert line["error"] is None
    assert line["response"]["status_code"] == 200
    assert line["response"]["request_id"]
    body = line["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny-llama"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "re: hi there",
        "refusal": None,
        "tool_calls": [],
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_output_file_belongs_to_the_owner_and_is_downloadable(user, chat_model, engine):
    batch = make_batch(user, [chat_request("a")])
    run(batch)
    output = File.objects.get(pk=batch.output_file_id)
    assert output.owner == user
    assert output.purpose == "batch_output"
    assert output.filename == f"{batch.id}_output.jsonl"
    assert output.line_count == 1
    with default_storage.open(output.storage_name, "rb") as stream:
        data = stream.read()
    assert output.bytes == len(data)

    api = make_client(user)
    body = api.get(f"/v1/batches/{batch.id}").json()
    assert body["status"] == "completed"
    assert body["output_file_id"] == output.id
    assert body["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    listed = api.get("/v1/files?purpose=batch_output").json()["data"]
    assert [f["id"] for f in listed] == [output.id]
    response = api.get(f"/v1/files/{output.id}/content")
    assert b"".join(response.streaming_content) == data
    response.close()


def test_usage_totals_add_up_every_request(user, chat_model, engine):
    batch = make_batch(user, [chat_request("a", content="one two three"), chat_request("b", content="four")])
    run(batch)
    assert batch.input_tokens == 3 + 1
    assert batch.output_tokens == 2 + 2
    assert batch.to_openai()["usage"]["total_tokens"] == 8


def test_engine_gets_the_sampling_parameters_and_the_messages(user, chat_model, engine):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    request = chat_request("a", max_completion_tokens=7, temperature=0.2, seed=1, n=2)
    request["body"]["messages"] = messages
    request["body"]["chat_template_kwargs"] = {"enable_thinking": False}
    batch = make_batch(user, [request])
    run(batch)
    (item,) = engine.fake().items
    assert item.chat == messages
    assert item.prompt is None
    assert item.sampling == {"max_tokens": 7, "temperature": 0.2, "seed": 1, "n": 2}
    assert item.chat_options == {"chat_template_kwargs": {"enable_thinking": False}}
    choices = read_jsonl(batch.output_file_id)[0]["response"]["body"]["choices"]
    assert [c["index"] for c in choices] == [0, 1]


def test_completions_with_several_prompts_answer_in_one_line(user, chat_model, engine):
    batch = make_batch(
        user,
        [completion_request("a", prompt=["first", "second"]), completion_request("b", prompt="third")],
        endpoint=COMPLETIONS,
    )
    assert run(batch) == "completed"
    assert [item.key for item in engine.fake().items] == [(1, 0), (1, 1), (2, 0)]
    assert engine.fake().items[0].sampling == {"max_tokens": 16}
    output = read_jsonl(batch.output_file_id)
    assert custom_ids(output) == ["a", "b"]
    body = output[0]["response"]["body"]
    assert body["object"] == "text_completion"
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "re: first"), (1, "re: second")]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert batch.completed_requests == 2


def test_output_keeps_one_line_per_request_when_the_text_holds_unicode_line_breaks(user, chat_model, engine):
    """A model can emit U+2028, U+2029 or U+0085; str.splitlines() must still see one line each."""
    breaks = "a\u2028b\u2029c\x85d \u00e9\u4e2d"
    choice = Choice(text=breaks, completion_tokens=3, finish_reason="stop")
    engine.fake(respond=lambda item: Generation(prompt_tokens=1, choices=[choice]))
    batch = make_batch(user, [chat_request("a"), chat_request("b")])
    run(batch)
    file = File.objects.get(pk=batch.output_file_id)
    with default_storage.open(file.storage_name, "rb") as stream:
        text = stream.read().decode()
    lines = text.splitlines()
    assert len(lines) == 2
    assert [json.loads(line)["response"]["body"]["choices"][0]["message"]["content"] for line in lines] == [breaks] * 2
    assert "\u00e9\u4e2d" in text and "\\u00e9" not in text  # other text stays readable UTF-8


# -- requests that fail on their own ------------------------------------------


def test_engine_error_goes_to_the_error_file_and_the_batch_completes(user, chat_model, engine):
    def respond(item):
        if prompt_is(item, "too long"):
            return EngineError("The prompt is too long.", param="messages", code="context_length_exceeded")
        return echo(item)

    engine.fake(respond=respond)
    batch = make_batch(user, [chat_request("a"), chat_request("b", content="too long"), chat_request("c")])

    assert run(batch) == "completed"

    output, errors = output_and_errors(batch)
    assert custom_ids(output) == ["a", "c"]
    assert custom_ids(errors) == ["b"]
    (line,) = errors
    assert line["error"] is None
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"] == {
        "error": {
            "message": "The prompt is too long.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    assert (batch.completed_requests, batch.failed_requests) == (2, 1)
    error_file = File.objects.get(pk=batch.error_file_id)
    assert error_file.purpose == "batch_error"
    assert error_file.owner == user


def prompt_is(item, text):
    return item.chat[-1]["content"] == text


def test_bad_parameters_fail_the_request_without_reaching_the_engine(user, chat_model, engine):
    batch = make_batch(user, [chat_request("a"), chat_request("hot", temperature=5), chat_request("c")])
    assert run(batch) == "completed"
    assert engine.fake().lines == [1, 3]
    output, errors = output_and_errors(batch)
    assert custom_ids(output) == ["a", "c"]
    (line,) = errors
    assert line["custom_id"] == "hot"
    assert line["response"]["status_code"] == 400
    error = line["response"]["body"]["error"]
    assert error["param"] == "body.temperature"
    assert error["code"] == "invalid_value"
    assert (batch.completed_requests, batch.failed_requests) == (2, 1)


def test_a_batch_where_every_request_fails_still_completes(user, chat_model, engine):
    batch = make_batch(user, [chat_request("a", messages=[]), chat_request("b", top_p="x")])
    assert run(batch) == "completed"
    assert engine.fake().items == []
    assert batch.output_file_id is None
    assert_each_custom_id_once(batch, ["a", "b"])
    assert (batch.completed_requests, batch.failed_requests) == (0, 2)


# -- resume, continuation, lease ---------------------------------------------


def test_resume_runs_only_the_requests_without_a_saved_result(user, chat_model, engine):
    ids = ["a", "b", "c", "d", "e"]
    batch = in_progress(make_batch(user, [chat_request(i) for i in ids]))
    # A worker crashed after saving the first two requests.
    save_results(batch, [(1, "a"), (2, "b")])
    Batch.objects.filter(pk=batch.pk).update(claimed_by="crashed:1", heartbeat_at=None)

    assert run(batch) == "completed"

    assert engine.fake().lines == [3, 4, 5]
    assert_each_custom_id_once(batch, ids)
    output = read_jsonl(batch.output_file_id)
    assert custom_ids(output) == ids
    # The saved results are written as they were, not run again.
    assert output[0]["response"]["body"] == {"object": "chat.completion", "usage": {}}
    assert (batch.total_requests, batch.completed_requests, batch.failed_requests) == (5, 5, 0)


def test_resume_counts_blank_lines_like_validation(user, chat_model, engine):
    batch = in_progress(make_batch(user, [chat_request("a"), "", chat_request("b"), chat_request("c")]))
    save_results(batch, [(1, "a"), (3, "b")])
    assert run(batch) == "completed"
    assert engine.fake().lines == [4]
    assert_each_custom_id_once(batch, ["a", "b", "c"])


def test_a_used_up_time_slice_saves_progress_and_queues_the_rest(user, chat_model, engine, settings, monkeypatch):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "TASK_SLICE_SECONDS": 0}
    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", queued.append)
    ids = ["a", "b", "c", "d", "e"]
    batch = make_batch(user, [chat_request(i) for i in ids])
    queued_at = batch.queued_at

    assert run(batch) == "continued"
    assert queued == [batch.pk]
    assert batch.status == "in_progress"
    assert batch.claimed_by == ""
    assert batch.queued_at > queued_at, "behind the batches queued meanwhile: batches take turns"
    assert batch.completed_requests == 2
    assert BatchResult.objects.filter(batch=batch).count() == 2

    outcomes = []
    while batch.status == "in_progress":
        outcomes.append(run(batch))
    assert outcomes[-1] == "completed"
    assert_each_custom_id_once(batch, ids)
    assert sorted(engine.fake().lines) == [1, 2, 3, 4, 5]
    assert len(engine.fake().items) == 5


def test_a_realtime_swap_request_makes_the_batch_hand_back_at_the_next_chunk(user, chat_model, engine, monkeypatch):
    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", queued.append)
    ids = ["a", "b", "c", "d", "e"]
    batch = make_batch(user, [chat_request(i) for i in ids])
    with state.swap_wanted():
        assert run(batch) == "continued"
    assert queued == [batch.pk]
    assert batch.status == "in_progress" and batch.claimed_by == ""
    assert BatchResult.objects.filter(batch=batch).count() == 2
    assert run(batch) == "completed"
    assert_each_custom_id_once(batch, ids)


def test_a_batch_waiting_for_the_engine_is_handed_back_when_cancelled(user, chat_model, monkeypatch):
    """A model held for realtime requests keeps the batch waiting; a cancel ends the wait."""
    from workers.engine import host as engine_host

    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", queued.append)
    seen = []

    @contextmanager
    def engine_for(registered_model, interrupted=None, **kwargs):
        seen.append(interrupted())
        Batch.objects.filter(pk=batch.pk).update(status="cancelling", cancelling_at=timezone.now())
        seen.append(interrupted())
        raise engine_host.Interrupted
        yield

    monkeypatch.setattr(engine_host, "engine_for", engine_for)
    batch = make_batch(user, [chat_request("a")])
    assert run(batch) == "continued"
    assert seen == [False, True]
    assert queued == [batch.pk]
    assert batch.status == "cancelling" and batch.claimed_by == ""


def test_a_batch_another_worker_holds_is_skipped(user, chat_model, engine):
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(claimed_by="other:2", heartbeat_at=timezone.now())
    assert run(batch) == "skipped"
    assert batch.status == "validating"
    assert batch.claimed_by == "other:2"
    assert engine.requested == []


def test_a_stale_lease_is_taken_over(user, chat_model, engine, settings):
    batch = make_batch(user, [chat_request("a")])
    stale = timezone.now() - datetime.timedelta(seconds=settings.VLLM_BATCH["STALE_BATCH_SECONDS"] + 1)
    Batch.objects.filter(pk=batch.pk).update(claimed_by="other:2", heartbeat_at=stale)
    assert run(batch) == "completed"


def test_a_finished_batch_is_skipped(user, chat_model, engine):
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(status="completed")
    assert run(batch) == "skipped"
    assert engine.requested == []


def test_a_worker_that_lost_its_lease_stops_without_finalizing(user, chat_model, engine):
    def steal(pulled):
        if pulled == 3:
            Batch.objects.filter(pk=batch.pk).update(claimed_by="other:2")

    engine.fake(before_result=steal)
    batch = make_batch(user, [chat_request(i) for i in "abcdef"])
    assert run(batch) == "skipped"
    assert batch.status == "in_progress"
    assert batch.claimed_by == "other:2"
    assert batch.output_file_id is None
    # The chunk finished after the takeover is not saved: the new holder runs it again.
    assert BatchResult.objects.filter(batch=batch).count() == 2
    assert batch.completed_requests == 2


# -- cancel -------------------------------------------------------------------


def test_cancel_mid_run_keeps_finished_results(user, chat_model, engine):
    def cancel(pulled):
        if pulled == 3:
            Batch.objects.filter(pk=batch.pk).update(status="cancelling", cancelling_at=timezone.now())

    engine.fake(before_result=cancel)
    ids = ["a", "b", "c", "d", "e", "f"]
    batch = make_batch(user, [chat_request(i) for i in ids])

    assert run(batch) == "cancelled"

    assert batch.status == "cancelled"
    assert batch.cancelled_at is not None
    assert batch.completed_at is None
    assert custom_ids(read_jsonl(batch.output_file_id)) == ["a", "b", "c", "d"]
    assert batch.error_file_id is None
    assert engine.fake().lines == [1, 2, 3, 4]
    assert (batch.total_requests, batch.completed_requests, batch.failed_requests) == (6, 4, 0)
    assert batch.claimed_by == ""


def test_a_batch_cancelled_before_it_ran_never_reaches_the_engine(user, chat_model, engine):
    batch = in_progress(make_batch(user, [chat_request("a")]))
    save_results(batch, [(1, "a")])
    Batch.objects.filter(pk=batch.pk).update(status="cancelling", cancelling_at=timezone.now())
    assert run(batch) == "cancelled"
    assert engine.requested == []
    assert custom_ids(read_jsonl(batch.output_file_id)) == ["a"]


def test_a_cancel_during_validation_of_a_bad_file_still_ends_the_batch(user, chat_model, engine, monkeypatch):
    from jobs import services

    real_validate_input = services.validate_input

    def validate_input_then_cancel(*args, **kwargs):
        result = real_validate_input(*args, **kwargs)
        Batch.objects.filter(pk=batch.pk).update(status="cancelling", cancelling_at=timezone.now())
        return result

    monkeypatch.setattr(services, "validate_input", validate_input_then_cancel)
    batch = make_batch(user, [chat_request("a"), "not json"])
    assert run(batch) == "cancelled"
    assert batch.status == "cancelled"
    assert batch.claimed_by == ""
    assert engine.requested == []


# -- expiry -------------------------------------------------------------------


def test_expired_batch_lists_unfinished_requests_in_the_error_file(user, chat_model, engine):
    ids = ["a", "b", "c", "d", "e"]
    batch = in_progress(make_batch(user, [chat_request(i) for i in ids]))
    save_results(batch, [(1, "a"), (2, "b")])
    Batch.objects.filter(pk=batch.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))

    assert run(batch) == "expired"

    assert engine.requested == [], "a batch past its window runs nothing more"

    assert batch.status == "expired"
    assert batch.expired_at is not None
    output, errors = output_and_errors(batch)
    assert custom_ids(output) == ["a", "b"]
    assert custom_ids(errors) == ["c", "d", "e"]
    for line in errors:
        assert line["id"].startswith("batch_req_")
        assert line["response"] is None
        assert line["error"]["code"] == "batch_expired"
        assert line["error"]["message"]
    assert (batch.total_requests, batch.completed_requests, batch.failed_requests) == (5, 2, 3)
    assert_each_custom_id_once(batch, ids)


def test_expired_batch_keeps_request_errors_before_the_expired_ones(user, chat_model, engine, settings):
    batch = in_progress(make_batch(user, [chat_request("a", temperature=9), chat_request("b"), chat_request("c")]))
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "CHUNK_SIZE": 2}
    engine.fake(
        before_result=lambda count: (
            count == 1
            and Batch.objects.filter(pk=batch.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
        )
    )
    assert run(batch) == "expired"
    output, errors = output_and_errors(batch)
    assert custom_ids(output) == ["b"]
    assert custom_ids(errors) == ["a", "c"]
    assert errors[0]["response"]["status_code"] == 400
    assert errors[1]["error"]["code"] == "batch_expired"
    assert (batch.completed_requests, batch.failed_requests) == (1, 2)


def test_a_batch_that_expired_before_validation_never_runs(user, chat_model, engine):
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    assert run(batch) == "expired"
    assert batch.status == "expired"
    assert batch.expired_at is not None
    assert engine.requested == []


# -- models -------------------------------------------------------------------


def test_a_batch_for_an_unknown_model_fails_validation(user, chat_model, engine):
    batch = make_batch(user, [chat_request("a"), chat_request("b", model="no-such-model")])
    assert run(batch) == "failed"
    assert batch.status == "failed"
    assert batch.failed_at is not None
    assert [(e["code"], e["line"], e["param"]) for e in batch.errors] == [("model_not_found", 2, "body.model")]
    assert batch.output_file_id is None
    assert batch.claimed_by == ""
    assert engine.requested == []


def test_a_model_removed_after_validation_fails_the_batch(user, chat_model, engine):
    batch = in_progress(make_batch(user, [chat_request("a")]))
    RegisteredModel.objects.filter(pk=chat_model.pk).update(is_active=False)
    assert run(batch) == "failed"
    assert batch.errors[0]["code"] == "model_not_found"
    assert engine.requested == []


def test_the_engine_is_asked_for_the_batchs_model(user, chat_model, engine):
    RegisteredModel.objects.create(name="other-llama", path="/x")
    batch = make_batch(user, [chat_request("a", model="other-llama")])
    run(batch)
    assert engine.requested == ["other-llama"]
    assert read_jsonl(batch.output_file_id)[0]["response"]["body"]["model"] == "other-llama"


# -- embeddings ---------------------------------------------------------------


def test_embeddings_batch_answers_openais_list(user, embedding_model, engine):
    batch = make_batch(
        user,
        [embedding_request("a", text="hello"), embedding_request("b", text=["x", "y"])],
        endpoint=EMBEDDINGS,
    )
    assert run(batch) == "completed"
    output = read_jsonl(batch.output_file_id)
    assert custom_ids(output) == ["a", "b"]
    body = output[1]["response"]["body"]
    assert body["object"] == "list"
    assert body["model"] == "tiny-embed"
    assert body["data"] == [
        {"object": "embedding", "index": 0, "embedding": [0.5, -1.25, 2.0]},
        {"object": "embedding", "index": 1, "embedding": [0.5, -1.25, 2.0]},
    ]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert engine.fake("tiny-embed").embed_calls == [(["hello", "x", "y"], None)]
    assert (batch.input_tokens, batch.output_tokens) == (6, 0)


def test_embeddings_base64_decodes_to_the_floats(user, embedding_model, engine):
    batch = make_batch(user, [embedding_request("a", encoding_format="base64")], endpoint=EMBEDDINGS)
    run(batch)
    encoded = read_jsonl(batch.output_file_id)[0]["response"]["body"]["data"][0]["embedding"]
    raw = base64.b64decode(encoded)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == [0.5, -1.25, 2.0]


def test_embeddings_pass_dimensions_to_the_engine(user, embedding_model, engine):
    batch = make_batch(user, [embedding_request("a", dimensions=2), embedding_request("b")], endpoint=EMBEDDINGS)
    run(batch)
    assert sorted(engine.fake("tiny-embed").embed_calls, key=str) == sorted(
        [(["hello"], 2), (["hello"], None)], key=str
    )
    output = {line["custom_id"]: line for line in read_jsonl(batch.output_file_id)}
    assert output["a"]["response"]["body"]["data"][0]["embedding"] == [0.5, -1.25]
    assert len(output["b"]["response"]["body"]["data"][0]["embedding"]) == 3


def test_embeddings_with_bad_parameters_or_engine_errors_go_to_the_error_file(user, embedding_model, engine):
    def vectors(text, dimensions):
        return EngineError("Input is too long.") if text == "huge" else [1.0]

    engine.fake("tiny-embed", vectors=vectors)
    batch = make_batch(
        user,
        [
            embedding_request("ok"),
            embedding_request("fmt", encoding_format="hex"),
            embedding_request("dim", dimensions=0),
            embedding_request("big", text="huge"),
        ],
        endpoint=EMBEDDINGS,
    )
    assert run(batch) == "completed"
    output, errors = output_and_errors(batch)
    assert custom_ids(output) == ["ok"]
    by_id = {line["custom_id"]: line["response"] for line in errors}
    assert set(by_id) == {"fmt", "dim", "big"}
    assert all(r["status_code"] == 400 for r in by_id.values())
    assert by_id["fmt"]["body"]["error"]["param"] == "body.encoding_format"
    assert by_id["dim"]["body"]["error"]["param"] == "body.dimensions"
    assert by_id["big"]["body"]["error"]["message"] == "Input is too long."
    assert (batch.completed_requests, batch.failed_requests) == (1, 3)


def test_a_large_embeddings_batch_is_embedded_chunk_by_chunk(user, embedding_model, engine):
    ids = [f"e{i}" for i in range(5)]
    batch = make_batch(user, [embedding_request(i, text=i) for i in ids], endpoint=EMBEDDINGS)
    assert run(batch) == "completed"
    assert [call[0] for call in engine.fake("tiny-embed").embed_calls] == [["e0", "e1"], ["e2", "e3"], ["e4"]]
    assert_each_custom_id_once(batch, ids)


def test_a_result_saved_twice_keeps_the_first_line(user, chat_model):
    from jobs.services import _insert_results

    batch = make_batch(user, [chat_request("a")])
    _insert_results(batch.pk, [(1, "a", False, '{"first": true}')])
    _insert_results(batch.pk, [(1, "a", True, '{"second": true}'), (2, "b", False, '{"b": 1}')])
    rows = list(BatchResult.objects.filter(batch=batch).order_by("line").values_list("line", "is_error", "text"))
    assert rows == [(1, False, '{"first": true}'), (2, False, '{"b": 1}')]


# -- the engine's process dies ---------------------------------------------------


def dies_after(pulled_limit):
    def before_result(pulled):
        if pulled > pulled_limit:
            raise EngineDead("EngineCore encountered an issue")

    return before_result


def test_a_dead_engine_hands_the_batch_back_keeping_what_finished(user, chat_model, engine, monkeypatch):
    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", queued.append)
    engine.fake(before_result=dies_after(3))
    ids = ["a", "b", "c", "d", "e"]
    batch = make_batch(user, [chat_request(i) for i in ids])

    assert run(batch) == "continued"
    assert queued == [batch.pk]
    assert batch.engine_failures == 1
    assert batch.status == "in_progress" and batch.claimed_by == ""
    assert BatchResult.objects.filter(batch=batch).count() == 3

    engine.fake(before_result=None)  # the next attempt gets a new engine
    assert run(batch) == "completed"
    assert_each_custom_id_once(batch, ids)
    assert batch.failed_requests == 0


def test_a_batch_that_keeps_killing_the_engine_ends_with_the_rest_as_errors(user, chat_model, engine, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "MAX_ENGINE_FAILURES": 2}
    ids = ["a", "b", "c", "d", "e"]
    batch = make_batch(user, [chat_request(i) for i in ids])
    Batch.objects.filter(pk=batch.pk).update(engine_failures=1)
    engine.fake(before_result=dies_after(2))

    assert run(batch) == "completed"
    assert batch.engine_failures == 2
    assert (batch.completed_requests, batch.failed_requests) == (2, 3)
    output, errors = output_and_errors(batch)
    assert custom_ids(output) == ["a", "b"]
    assert custom_ids(errors) == ["c", "d", "e"]
    assert {e["error"]["code"] for e in errors} == {"engine_error"}
    assert "failed 2 times" in errors[0]["error"]["message"]
