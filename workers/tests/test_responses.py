"""workers.bodies.responses: response bodies, field by field against OpenAI's shapes."""

import base64
import struct

from workers.bodies import responses
from workers.engine.types import Choice, Embedding, Generation, TokenLogprob


def generation(*texts, prompt_tokens=5, logprobs=None):
    return Generation(
        prompt_tokens=prompt_tokens,
        choices=[
            Choice(text=t, completion_tokens=len(t.split()), finish_reason="stop", logprobs=logprobs) for t in texts
        ],
    )


# -- chat.completion ----------------------------------------------------------


def test_chat_completion_has_openais_fields():
    body = responses.chat_completion(generation("Hello there"), "tiny-llama", created=1700000000)
    assert set(body) == {
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "system_fingerprint",
        "service_tier",
    }
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["created"] == 1700000000
    assert body["model"] == "tiny-llama"
    assert body["system_fingerprint"] is None
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there", "refusal": None, "tool_calls": []},
            "logprobs": None,
            "finish_reason": "stop",
            "stop_reason": None,
        }
    ]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_chat_completion_numbers_choices_and_sums_their_tokens():
    body = responses.chat_completion(generation("a", "b c", "d e f"), "m")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in body["choices"]] == ["a", "b c", "d e f"]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}


def test_chat_completion_created_defaults_to_now_as_an_int():
    body = responses.chat_completion(generation("a"), "m")
    assert isinstance(body["created"], int)
    assert body["created"] > 1700000000


def test_chat_completion_ids_are_unique():
    assert (
        responses.chat_completion(generation("a"), "m")["id"] != responses.chat_completion(generation("a"), "m")["id"]
    )


def test_chat_logprobs_shape():
    logprobs = [
        TokenLogprob(token="Hi", logprob=-0.1, bytes=[72, 105], top=[("Hi", -0.1, [72, 105]), ("Hey", -2.5, None)]),
        TokenLogprob(token="!", logprob=-0.5, bytes=[33]),
    ]
    body = responses.chat_completion(generation("Hi!", logprobs=logprobs), "m")
    assert body["choices"][0]["logprobs"] == {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.1,
                "bytes": [72, 105],
                "top_logprobs": [
                    {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
                    {"token": "Hey", "logprob": -2.5, "bytes": None},
                ],
            },
            {"token": "!", "logprob": -0.5, "bytes": [33], "top_logprobs": []},
        ],
        "refusal": None,
    }


def test_chat_finish_reason_length_and_stop_reason():
    gen = Generation(prompt_tokens=1, choices=[Choice(text="x", completion_tokens=1, finish_reason="length")])
    assert responses.chat_completion(gen, "m")["choices"][0]["finish_reason"] == "length"
    gen = Generation(
        prompt_tokens=1, choices=[Choice(text="x", completion_tokens=1, finish_reason="stop", stop_reason="END")]
    )
    assert responses.chat_completion(gen, "m")["choices"][0]["stop_reason"] == "END"


# -- text_completion ----------------------------------------------------------


def test_text_completion_has_openais_fields():
    body = responses.text_completion([generation("world")], "tiny-llama", created=1700000000)
    assert set(body) == {"id", "object", "created", "model", "choices", "usage", "system_fingerprint"}
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["created"] == 1700000000
    assert body["model"] == "tiny-llama"
    assert body["system_fingerprint"] is None
    assert body["choices"] == [
        {"index": 0, "text": "world", "logprobs": None, "finish_reason": "stop", "stop_reason": None}
    ]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}


def test_text_completion_numbers_choices_prompt_by_prompt():
    body = responses.text_completion(
        [generation("a1", "a2", prompt_tokens=3), generation("b1", "b2", prompt_tokens=4)], "m"
    )
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "a1"), (1, "a2"), (2, "b1"), (3, "b2")]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}


def test_text_completion_logprobs_shape():
    logprobs = [
        TokenLogprob(token="Hel", logprob=-0.2, bytes=[], top=[("Hel", -0.2, None), ("He", -1.0, None)]),
        TokenLogprob(token="lo", logprob=-0.3, bytes=[], top=[("lo", -0.3, None)]),
        TokenLogprob(token=" you", logprob=-0.4, bytes=[]),
    ]
    body = responses.text_completion([generation("Hello you", logprobs=logprobs)], "m")
    assert body["choices"][0]["logprobs"] == {
        "tokens": ["Hel", "lo", " you"],
        "token_logprobs": [-0.2, -0.3, -0.4],
        "top_logprobs": [{"Hel": -0.2, "He": -1.0}, {"lo": -0.3}, {}],
        "text_offset": [0, 3, 5],
    }


# -- embeddings ---------------------------------------------------------------


def test_embedding_list_has_openais_fields():
    body = responses.embedding_list(
        [Embedding(prompt_tokens=3, vector=[0.1, 0.2]), Embedding(prompt_tokens=4, vector=[0.3, 0.4])], "tiny-embed"
    )
    assert body == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
            {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
        ],
        "model": "tiny-embed",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }


def test_embedding_base64_is_little_endian_float32():
    vector = [0.5, -1.25, 3.0, 0.0]
    body = responses.embedding_list([Embedding(prompt_tokens=1, vector=vector)], "m", encoding_format="base64")
    encoded = body["data"][0]["embedding"]
    assert isinstance(encoded, str)
    raw = base64.b64decode(encoded)
    assert len(raw) == 4 * len(vector)
    assert list(struct.unpack("<4f", raw)) == vector


def test_embedding_base64_matches_what_the_openai_sdk_decodes():
    # The openai SDK decodes with numpy.frombuffer(base64.b64decode(x), dtype="float32").
    vector = [0.1, 0.2, 0.3]
    encoded = responses.embedding_list([Embedding(1, vector)], "m", "base64")["data"][0]["embedding"]
    decoded = struct.unpack("<3f", base64.b64decode(encoded))
    assert all(abs(a - b) < 1e-7 for a, b in zip(decoded, vector, strict=True))


# -- usage --------------------------------------------------------------------


def test_usage_of_reads_input_and_output_tokens():
    assert responses.usage_of(responses.chat_completion(generation("a b"), "m")) == (5, 2)
    assert responses.usage_of(responses.embedding_list([Embedding(3, [0.0])], "m")) == (3, 0)
    assert responses.usage_of({"error": {}}) == (0, 0)
