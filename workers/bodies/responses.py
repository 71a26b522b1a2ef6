"""OpenAI response bodies from the engine's plain results (no vLLM, no Django).

The batch files' lines that wrap them are jobs.jsonl's."""

import base64
import os
import struct
import time


def _hex():
    # As unique as uuid4().hex, at a fifth of its cost: three per batch request.
    return os.urandom(16).hex()


def _usage(prompt_tokens, completion_tokens):
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat_logprobs(entries):
    if entries is None:
        return None
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, lp, b in e.top],
            }
            for e in entries
        ],
        "refusal": None,
    }


def _completion_logprobs(entries, start_offset=0):
    if entries is None:
        return None
    offsets = []
    offset = start_offset
    for e in entries:
        offsets.append(offset)
        offset += len(e.token or "")
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t: lp for t, lp, _ in e.top} for e in entries],
        "text_offset": offsets,
    }


def chat_completion(generation, model, created=None):
    completion_tokens = sum(c.completion_tokens for c in generation.choices)
    return {
        "id": f"chatcmpl-{_hex()}",
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text, "refusal": None, "tool_calls": []},
                "logprobs": _chat_logprobs(c.logprobs),
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
            }
            for i, c in enumerate(generation.choices)
        ],
        "usage": _usage(generation.prompt_tokens, completion_tokens),
        "system_fingerprint": None,
        "service_tier": None,
    }


def text_completion(generations, model, created=None):
    """One body for all prompts of a completions request; choice index runs
    prompt by prompt, as OpenAI numbers them."""
    choices = []
    prompt_tokens = 0
    completion_tokens = 0
    for generation in generations:
        prompt_tokens += generation.prompt_tokens
        for c in generation.choices:
            completion_tokens += c.completion_tokens
            choices.append(
                {
                    "index": len(choices),
                    "text": c.text,
                    "logprobs": _completion_logprobs(c.logprobs),
                    "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason,
                }
            )
    return {
        "id": f"cmpl-{_hex()}",
        "object": "text_completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(prompt_tokens, completion_tokens),
        "system_fingerprint": None,
    }


def _encode_vector(vector, encoding_format):
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def embedding_list(embeddings, model, encoding_format="float"):
    prompt_tokens = sum(e.prompt_tokens for e in embeddings)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode_vector(e.vector, encoding_format)}
            for i, e in enumerate(embeddings)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def usage_of(body):
    """(input_tokens, output_tokens) of a response body, for the batch's usage totals."""
    usage = body.get("usage") or {}
    return usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
