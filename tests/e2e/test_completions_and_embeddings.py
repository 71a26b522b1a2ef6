import base64
import math
import struct
import time

import openai
import pytest

from .conftest import read_lines, submit, wait_finished

pytestmark = pytest.mark.e2e


def completion_request(custom_id, prompt, **body):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": "tiny-llama", "prompt": prompt, **body},
    }


def embedding_request(custom_id, text, **body):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "all-MiniLM-L6-v2", "input": text, **body},
    }


def test_completions_batch(client):
    requests = [completion_request(f"c{i}", f"the model {i}", max_tokens=6, temperature=0) for i in range(30)]
    requests.append(completion_request("multi", ["one prompt", "two prompt"], max_tokens=3, logprobs=1))
    requests.append(completion_request("stop", "hello", max_tokens=30, stop=["e"], temperature=0))
    batch = wait_finished(client, submit(client, requests, endpoint="/v1/completions").id)

    assert batch.status == "completed"
    assert batch.request_counts.completed == 32
    out = {o["custom_id"]: o["response"]["body"] for o in read_lines(client, batch.output_file_id)}
    assert out["c0"]["object"] == "text_completion"
    assert out["c0"]["usage"]["completion_tokens"] <= 6
    assert [c["index"] for c in out["multi"]["choices"]] == [0, 1]
    assert len(out["multi"]["choices"][0]["logprobs"]["tokens"]) == 3
    stopped = out["stop"]["choices"][0]
    assert "e" not in stopped["text"]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_embeddings_batch_gives_meaningful_vectors(client):
    """Swaps the worker to all-MiniLM-L6-v2 (a pooling model) and back later."""
    requests = [
        embedding_request("cat", "A cat sits on the mat."),
        embedding_request("kitten", "A kitten is sitting on a rug."),
        embedding_request("finance", "Quarterly revenue grew by eight percent."),
        embedding_request("pair", ["first text", "second text"]),
        embedding_request("b64", "encode me", encoding_format="base64"),
        # MiniLM has no Matryoshka embeddings: vLLM refuses `dimensions`, and that is this request's error.
        embedding_request("shorter", "cut me short", dimensions=1),
    ]
    batch = wait_finished(client, submit(client, requests, endpoint="/v1/embeddings").id, timeout=400)

    assert batch.status == "completed", batch.errors
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 1)
    (refused,) = read_lines(client, batch.error_file_id)
    assert refused["custom_id"] == "shorter"
    message = refused["response"]["body"]["error"]["message"]
    assert refused["response"]["status_code"] == 400 and "Matryoshka" in message
    assert "'all-MiniLM-L6-v2'" in message and "/" not in message  # the model's name, not its path
    out = {o["custom_id"]: o["response"]["body"] for o in read_lines(client, batch.output_file_id)}
    vec = {k: out[k]["data"][0]["embedding"] for k in ("cat", "kitten", "finance")}
    assert len(vec["cat"]) == 384
    assert cosine(vec["cat"], vec["kitten"]) > cosine(vec["cat"], vec["finance"]) + 0.2
    assert [d["index"] for d in out["pair"]["data"]] == [0, 1]
    assert out["cat"]["object"] == "list" and out["cat"]["usage"]["prompt_tokens"] > 0
    raw = base64.b64decode(out["b64"]["data"][0]["embedding"])
    assert len(struct.unpack(f"<{len(raw) // 4}f", raw)) == 384

    # The same refusal through the realtime API, from the worker that now holds the model
    # (once its heartbeat says so): a 400.
    deadline = time.monotonic() + 60
    while True:
        try:
            client.embeddings.create(model="all-MiniLM-L6-v2", input="cut me short", dimensions=1)
        except openai.BadRequestError as exc:
            assert "Matryoshka" in exc.body["message"]
            break
        except openai.InternalServerError as exc:
            if exc.body.get("code") != "model_not_loaded" or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        else:
            raise AssertionError("dimensions on a model without Matryoshka embeddings was answered")
