"""OpenAI request bodies to plain engine arguments (no vLLM, no Django).

The web checks realtime bodies with these before asking a worker; the batch
runner and the realtime server build the engine's requests from them.

`sampling_kwargs` returns keyword arguments for vllm.SamplingParams, with the
structured-output request under the key "structured_outputs" as a plain dict for
vllm.sampling_params.StructuredOutputsParams.
"""

import json


class ParamError(ValueError):
    def __init__(self, message, param=None, code="invalid_value"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _number(body, name, lo=None, hi=None, integer=False):
    value = body.get(name)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ParamError(f"'{name}' must be {'an integer' if integer else 'a number'}.", name, "invalid_type")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ParamError(f"'{name}' must be between {lo} and {hi}, got {value}.", name)
    return value


def _stop(body):
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 16:
        return stop
    raise ParamError("'stop' must be a string or a list of at most 16 strings.", "stop", "invalid_type")


def _structured_outputs(body):
    """response_format (OpenAI) and vLLM's guided_* / structured_outputs extensions."""
    extra = body.get("structured_outputs")
    if extra is not None:
        if not isinstance(extra, dict):
            raise ParamError("'structured_outputs' must be an object.", "structured_outputs", "invalid_type")
        return dict(extra)
    if body.get("guided_choice") is not None:
        choice = body["guided_choice"]
        if not isinstance(choice, list) or not choice or not all(isinstance(c, str) for c in choice):
            raise ParamError("'guided_choice' must be a non-empty list of strings.", "guided_choice", "invalid_type")
        return {"choice": choice}
    if body.get("guided_json") is not None:
        schema = body["guided_json"]
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError:
                raise ParamError("'guided_json' must be a JSON schema.", "guided_json") from None
        return {"json": schema}
    if body.get("guided_regex") is not None:
        return {"regex": body["guided_regex"]}
    response_format = body.get("response_format")
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or "type" not in response_format:
        raise ParamError("'response_format' must be an object with a 'type'.", "response_format", "invalid_type")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ParamError(
                "response_format.json_schema.schema must be a JSON schema object.", "response_format.json_schema"
            )
        return {"json": spec["schema"]}
    raise ParamError(
        f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}.", "response_format.type"
    )


def sampling_kwargs(body, endpoint):
    """Keyword arguments for SamplingParams from an OpenAI chat or completions body."""
    kwargs = {}
    if endpoint == "/v1/chat/completions":
        max_tokens = _number(body, "max_completion_tokens", lo=1, integer=True)
        if max_tokens is None:
            max_tokens = _number(body, "max_tokens", lo=1, integer=True)
    else:
        max_tokens = _number(body, "max_tokens", lo=1, integer=True)
        if max_tokens is None and "max_tokens" not in body:
            max_tokens = 16  # OpenAI's default for /v1/completions
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens

    for name, lo, hi, integer in (
        ("temperature", 0, 2, False),
        ("top_p", 0, 1, False),
        ("presence_penalty", -2, 2, False),
        ("frequency_penalty", -2, 2, False),
        ("repetition_penalty", 0, None, False),
        ("min_p", 0, 1, False),
        ("top_k", -1, None, True),
        ("min_tokens", 0, None, True),
        ("seed", None, None, True),
    ):
        value = _number(body, name, lo, hi, integer)
        if value is not None:
            kwargs[name] = value
    n = _number(body, "n", lo=1, hi=128, integer=True)
    if n is not None:
        kwargs["n"] = n

    stop = _stop(body)
    if stop:
        kwargs["stop"] = stop
    if body.get("stop_token_ids") is not None:
        kwargs["stop_token_ids"] = body["stop_token_ids"]
    if body.get("ignore_eos") is not None:
        kwargs["ignore_eos"] = bool(body["ignore_eos"])
    if body.get("skip_special_tokens") is not None:
        kwargs["skip_special_tokens"] = bool(body["skip_special_tokens"])
    if body.get("logit_bias"):
        bias = body["logit_bias"]
        if not isinstance(bias, dict):
            raise ParamError("'logit_bias' must map token ids to numbers.", "logit_bias", "invalid_type")
        try:
            kwargs["logit_bias"] = {int(k): float(v) for k, v in bias.items()}
        except (TypeError, ValueError):
            raise ParamError("'logit_bias' must map token ids to numbers.", "logit_bias", "invalid_type") from None

    if endpoint == "/v1/chat/completions":
        if body.get("logprobs"):
            top = _number(body, "top_logprobs", lo=0, hi=20, integer=True) or 0
            kwargs["logprobs"] = top
    else:
        logprobs = _number(body, "logprobs", lo=0, hi=20, integer=True)
        if logprobs is not None:
            kwargs["logprobs"] = logprobs
        if body.get("suffix"):
            raise ParamError("'suffix' is not supported by this server.", "suffix", "unsupported_parameter")

    structured = _structured_outputs(body)
    if structured:
        kwargs["structured_outputs"] = structured
    return kwargs


def completion_prompts(body):
    """The prompts of a /v1/completions body: a list of str or of token-id lists."""
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return prompt
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [prompt]
        if all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt):
            return prompt
    raise ParamError(
        "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists.",
        "prompt",
        "invalid_type",
    )


def embedding_inputs(body):
    value = body["input"]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            return [value]
        if all(isinstance(v, list) and v and all(isinstance(t, int) for t in v) for v in value):
            return value
    raise ParamError("'input' must be a string, a list of strings or token ids.", "input", "invalid_type")


def embedding_request(body):
    """(inputs, dimensions, encoding_format) of an /v1/embeddings body."""
    inputs = embedding_inputs(body)
    dimensions = _number(body, "dimensions", lo=1, integer=True)
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise ParamError("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    return inputs, dimensions, encoding


# OpenAI's chat roles; batch lines are checked against the same list (jobs.validation).
MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def chat_messages(body):
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise ParamError("'messages' must be a non-empty list.", "messages", "invalid_type")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ParamError(f"messages[{i}] must be an object with a 'role'.", f"messages.{i}", "invalid_type")
        if message["role"] not in MESSAGE_ROLES:
            supported = ", ".join(f"'{role}'" for role in MESSAGE_ROLES)
            raise ParamError(
                f"Invalid value: {message['role']!r}. Supported values are: {supported}.", f"messages.{i}.role"
            )
    return messages


# Chat-template options of a chat body that vLLM takes beside the messages.
CHAT_OPTION_KEYS = ("chat_template_kwargs", "add_generation_prompt", "continue_final_message", "tools")


def chat_options(body):
    return {key: body[key] for key in CHAT_OPTION_KEYS if key in body}
