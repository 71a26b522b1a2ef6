"""The batch loop's cheap paths: output lines from a template, chunk saves on a thread of their own."""

import json
import threading
from collections import Counter

import pytest
from django.utils import timezone

from jobs.jsonl import dumps_line, output_line
from jobs.models import Batch, BatchResult
from jobs.tests.factories import chat_request, custom_ids, make_batch, read_jsonl
from workers import runner
from workers.bodies import responses
from workers.engine.types import Choice, Generation, TokenLogprob


def _without_ids(line):
    obj = json.loads(line)
    obj.pop("id")
    obj["response"].pop("request_id")
    obj["response"]["body"].pop("id")
    obj["response"]["body"].pop("created")
    return obj


@pytest.mark.parametrize(
    "text, finish_reason, stop_reason",
    [
        ("plain answer", "stop", None),
        ('quotes " and \\ backslashes, tabs\t and\nnewlines', "length", None),
        ("unicode: é ü 漢字 🙂 and a NUL \x00", "stop", "END"),
        ("line breaks \u2028 \u2029 \x85 kept inside the line", "stop", 2),
        ("", "stop", None),
    ],
)
def test_the_template_line_is_the_general_paths_line(text, finish_reason, stop_reason):
    generation = Generation(
        prompt_tokens=7,
        choices=[Choice(text=text, completion_tokens=3, finish_reason=finish_reason, stop_reason=stop_reason)],
    )
    fast = runner.chat_output_text('id "1"\u2028', generation, "tiny-llama")
    general = dumps_line(output_line('id "1"\u2028', responses.chat_completion(generation, "tiny-llama")))

    assert _without_ids(fast) == _without_ids(general)
    assert dumps_line(json.loads(fast)) == fast  # same separators, key order, escapes
    assert len(fast.split("\n")) == 1 and len(fast.splitlines()) == 1
    assert json.loads(fast)["response"]["body"]["choices"][0]["message"]["content"] == text


def test_every_line_gets_its_own_ids():
    generation = Generation(prompt_tokens=1, choices=[Choice(text="a", completion_tokens=1, finish_reason="stop")])
    lines = [json.loads(runner.chat_output_text("x", generation, "m")) for _ in range(50)]
    ids = [line["id"] for line in lines] + [line["response"]["request_id"] for line in lines]
    ids += [line["response"]["body"]["id"] for line in lines]
    assert len(set(ids)) == 150
    assert all(line["id"].startswith("batch_req_") for line in lines)
    assert all(line["response"]["body"]["id"].startswith("chatcmpl-") for line in lines)


def test_several_choices_or_logprobs_take_the_general_path():
    two = Generation(prompt_tokens=1, choices=[Choice(text="a", completion_tokens=1, finish_reason="stop")] * 2)
    logprobs = Generation(
        prompt_tokens=1,
        choices=[
            Choice(
                text="a",
                completion_tokens=1,
                finish_reason="stop",
                logprobs=[TokenLogprob(token="a", logprob=-0.1, bytes=[97])],
            )
        ],
    )
    assert runner.chat_output_text("x", two, "m") is None
    assert runner.chat_output_text("x", logprobs, "m") is None


# -- saving on a thread ---------------------------------------------------------


def test_the_saver_answers_with_the_chunk_before_and_raises_its_error():
    saved = []

    def save(rows):
        saved.append((rows, threading.current_thread()))
        if rows == ["bad"]:
            raise ValueError("boom")
        return f"after {rows}"

    saver = runner._Saver(save)
    assert saver.submit(["a"]) is None
    assert saver.submit(["b"]) == "after ['a']"
    assert saver.wait() == "after ['b']"
    assert saver.wait() is None
    saver.submit(["bad"])
    with pytest.raises(ValueError, match="boom"):
        saver.wait()
    assert saver.submit(["c"]) is None
    assert saver.stop() == "after ['c']"
    assert [rows for rows, _ in saved] == [["a"], ["b"], ["bad"], ["c"]]
    (thread,) = {thread for _, thread in saved}  # one thread (one connection) for every chunk
    assert thread.name == "chunk-saver" and not thread.is_alive()
    assert saver.stop() is None


@pytest.fixture
def saves_on_threads(monkeypatch):
    threads = []
    save = runner.job_services.batch_results_save

    def recording(**kwargs):
        threads.append(threading.current_thread().name)
        return save(**kwargs)

    monkeypatch.setattr(runner.job_services, "batch_results_save", recording)
    return threads


@pytest.mark.django_db(transaction=True)
def test_a_batch_saved_in_the_background_has_every_line_once(user, chat_model, engine, saves_on_threads, small_chunks):
    ids = [f"req-{i}" for i in range(9)]
    batch = make_batch(user, [chat_request(i, content=f"question {i}") for i in ids])

    assert runner.process_batch(batch.pk, holder="test:1") == "completed"

    batch.refresh_from_db()
    assert (batch.status, batch.completed_requests, batch.failed_requests) == ("completed", 9, 0)
    assert Counter(custom_ids(read_jsonl(batch.output_file_id))) == Counter(ids)
    assert batch.output_tokens == 18
    assert set(saves_on_threads) == {"chunk-saver"} and len(saves_on_threads) == 5  # chunks of two
    assert not BatchResult.objects.filter(batch=batch).exists()


@pytest.mark.django_db(transaction=True)
def test_a_cancel_seen_by_a_background_save_stops_the_batch(
    user, chat_model, engine, saves_on_threads, small_chunks, monkeypatch
):
    save = runner.job_services.batch_results_save

    def save_then_cancel(**kwargs):
        # The cancel arrives right after the first chunk's commit. Written on the saver's
        # own thread: the tests' in-memory SQLite (shared cache) answers a second writer
        # "table is locked" at once instead of letting it wait, as a database file does.
        saved = save(**kwargs)
        if len(saves_on_threads) == 1:
            Batch.objects.filter(pk=batch.pk).update(status="cancelling", cancelling_at=timezone.now())
        return saved

    monkeypatch.setattr(runner.job_services, "batch_results_save", save_then_cancel)
    ids = [f"req-{i}" for i in range(12)]
    batch = make_batch(user, [chat_request(i) for i in ids])

    assert runner.process_batch(batch.pk, holder="test:1") == "cancelled"

    batch.refresh_from_db()
    assert batch.status == "cancelled"
    done = custom_ids(read_jsonl(batch.output_file_id))
    # Seen one chunk later than a save on the feeding thread would see it; every
    # line that finished is kept, once.
    assert done == ids[: len(done)] and 4 <= len(done) <= 6
    assert batch.completed_requests == len(done)
    assert set(saves_on_threads) == {"chunk-saver"}
