"""workers.bodies.params: OpenAI request bodies to engine arguments."""

import pytest

from workers.bodies.params import ParamError, chat_messages, completion_prompts, embedding_inputs, sampling_kwargs

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def chat(**body):
    return sampling_kwargs({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}, CHAT)


def completion(**body):
    return sampling_kwargs({"model": "m", "prompt": "hi", **body}, COMPLETIONS)


def refused(call, **body):
    with pytest.raises(ParamError) as info:
        call(**body)
    return info.value


# -- token limits -------------------------------------------------------------


def test_chat_has_no_default_token_limit():
    assert chat() == {}


def test_chat_max_completion_tokens_becomes_max_tokens():
    assert chat(max_completion_tokens=50) == {"max_tokens": 50}


def test_chat_prefers_max_completion_tokens_over_max_tokens():
    assert chat(max_completion_tokens=50, max_tokens=10) == {"max_tokens": 50}
    assert chat(max_tokens=10) == {"max_tokens": 10}


def test_completions_default_to_16_tokens_as_openai_does():
    assert completion() == {"max_tokens": 16}
    assert completion(max_tokens=100) == {"max_tokens": 100}


def test_completions_with_null_max_tokens_have_no_limit():
    assert completion(max_tokens=None) == {}


@pytest.mark.parametrize("value", [0, -1])
def test_token_limit_below_one_is_refused(value):
    error = refused(chat, max_completion_tokens=value)
    assert (error.param, error.code) == ("max_completion_tokens", "invalid_value")


@pytest.mark.parametrize("value", [1.5, "10", True])
def test_token_limit_must_be_an_integer(value):
    error = refused(completion, max_tokens=value)
    assert (error.param, error.code) == ("max_tokens", "invalid_type")


# -- sampling -----------------------------------------------------------------


def test_sampling_numbers_pass_through():
    assert chat(temperature=0.7, top_p=0.9, presence_penalty=-1, frequency_penalty=1.5, seed=42, top_k=40, n=3) == {
        "temperature": 0.7,
        "top_p": 0.9,
        "presence_penalty": -1,
        "frequency_penalty": 1.5,
        "seed": 42,
        "top_k": 40,
        "n": 3,
    }


def test_vllm_extensions_pass_through():
    assert completion(
        repetition_penalty=1.1, min_p=0.05, min_tokens=2, stop_token_ids=[2], ignore_eos=1, skip_special_tokens=0
    ) == {
        "max_tokens": 16,
        "repetition_penalty": 1.1,
        "min_p": 0.05,
        "min_tokens": 2,
        "stop_token_ids": [2],
        "ignore_eos": True,
        "skip_special_tokens": False,
    }


def test_temperature_zero_is_kept():
    assert chat(temperature=0) == {"temperature": 0}


@pytest.mark.parametrize("value", [2.5, -0.1])
def test_temperature_out_of_range_is_refused(value):
    error = refused(chat, temperature=value)
    assert (error.param, error.code) == ("temperature", "invalid_value")
    assert str(value) in error.message


@pytest.mark.parametrize("value", ["hot", True, [1]])
def test_temperature_that_is_not_a_number_is_refused(value):
    error = refused(chat, temperature=value)
    assert (error.param, error.code) == ("temperature", "invalid_type")


@pytest.mark.parametrize(("name", "value"), [("top_p", 1.5), ("n", 0), ("n", 129), ("presence_penalty", 3)])
def test_out_of_range_values_are_refused(name, value):
    assert refused(chat, **{name: value}).param == name


def test_seed_must_be_an_integer():
    assert refused(chat, seed=1.5).code == "invalid_type"


def test_stop_string_becomes_a_list():
    assert chat(stop="\n") == {"stop": ["\n"]}
    assert chat(stop=["a", "b"]) == {"stop": ["a", "b"]}
    assert chat(stop=[]) == {}


@pytest.mark.parametrize("stop", [5, ["a", 1], ["x"] * 17])
def test_bad_stop_is_refused(stop):
    error = refused(chat, stop=stop)
    assert (error.param, error.code) == ("stop", "invalid_type")


def test_logit_bias_keys_become_token_ids():
    assert chat(logit_bias={"50256": -100, "11": 2}) == {"logit_bias": {50256: -100.0, 11: 2.0}}


@pytest.mark.parametrize("bias", [["a"], {"x": 1}, {"1": "high"}])
def test_bad_logit_bias_is_refused(bias):
    assert refused(chat, logit_bias=bias).param == "logit_bias"


# -- logprobs -----------------------------------------------------------------


def test_chat_logprobs_ask_for_top_logprobs():
    assert chat(logprobs=True, top_logprobs=3) == {"logprobs": 3}
    assert chat(logprobs=True) == {"logprobs": 0}
    assert chat(logprobs=False, top_logprobs=3) == {}


def test_chat_top_logprobs_over_20_is_refused():
    assert refused(chat, logprobs=True, top_logprobs=21).param == "top_logprobs"


def test_completion_logprobs_is_a_count():
    assert completion(logprobs=5) == {"max_tokens": 16, "logprobs": 5}
    assert completion(logprobs=0) == {"max_tokens": 16, "logprobs": 0}
    assert refused(completion, logprobs=21).param == "logprobs"


def test_completion_suffix_is_unsupported():
    error = refused(completion, suffix="end")
    assert (error.param, error.code) == ("suffix", "unsupported_parameter")


# -- structured outputs -------------------------------------------------------


def test_response_format_json_schema_becomes_structured_json():
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
    assert chat(response_format=response_format) == {"structured_outputs": {"json": SCHEMA}}


def test_response_format_json_object():
    assert chat(response_format={"type": "json_object"}) == {"structured_outputs": {"json_object": True}}


def test_response_format_text_asks_for_nothing():
    assert chat(response_format={"type": "text"}) == {}


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ("json", "response_format"),
        ({"json_schema": {}}, "response_format"),
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": "{}"}}, "response_format.json_schema"),
    ],
)
def test_bad_response_format_is_refused(response_format, param):
    assert refused(chat, response_format=response_format).param == param


def test_guided_choice_becomes_structured_choice():
    assert chat(guided_choice=["yes", "no"]) == {"structured_outputs": {"choice": ["yes", "no"]}}


@pytest.mark.parametrize("choice", [[], "yes", ["yes", 1]])
def test_bad_guided_choice_is_refused(choice):
    error = refused(chat, guided_choice=choice)
    assert (error.param, error.code) == ("guided_choice", "invalid_type")


def test_guided_json_accepts_a_schema_or_its_text():
    assert chat(guided_json=SCHEMA) == {"structured_outputs": {"json": SCHEMA}}
    import json

    assert chat(guided_json=json.dumps(SCHEMA)) == {"structured_outputs": {"json": SCHEMA}}
    assert refused(chat, guided_json="{not json").param == "guided_json"


def test_guided_regex_becomes_structured_regex():
    assert completion(guided_regex=r"\d+") == {"max_tokens": 16, "structured_outputs": {"regex": r"\d+"}}


def test_structured_outputs_pass_through_and_win():
    assert chat(structured_outputs={"grammar": "root ::= 'a'"}, guided_choice=["x"]) == {
        "structured_outputs": {"grammar": "root ::= 'a'"}
    }
    assert refused(chat, structured_outputs="x").param == "structured_outputs"


# -- prompts, inputs, messages ------------------------------------------------


def test_completion_prompt_shapes():
    assert completion_prompts({"prompt": "hi"}) == ["hi"]
    assert completion_prompts({"prompt": ["a", "b"]}) == ["a", "b"]
    assert completion_prompts({"prompt": [1, 2, 3]}) == [[1, 2, 3]]
    assert completion_prompts({"prompt": [[1, 2], [3]]}) == [[1, 2], [3]]


@pytest.mark.parametrize("prompt", [[], 5, None, [True, False], ["a", 1], [[]], {"a": 1}])
def test_bad_completion_prompt_is_refused(prompt):
    with pytest.raises(ParamError) as info:
        completion_prompts({"prompt": prompt})
    error = info.value
    assert (error.param, error.code) == ("prompt", "invalid_type")


def test_embedding_input_shapes():
    assert embedding_inputs({"input": "hi"}) == ["hi"]
    assert embedding_inputs({"input": ["a", "b"]}) == ["a", "b"]
    assert embedding_inputs({"input": [1, 2]}) == [[1, 2]]
    assert embedding_inputs({"input": [[1], [2, 3]]}) == [[1], [2, 3]]


@pytest.mark.parametrize("value", [[], 3, None, [1, "a"], [[]]])
def test_bad_embedding_input_is_refused(value):
    with pytest.raises(ParamError) as info:
        embedding_inputs({"input": value})
    assert (info.value.param, info.value.code) == ("input", "invalid_type")


def test_chat_messages_need_a_role():
    messages = [{"role": "user", "content": "hi"}]
    assert chat_messages({"messages": messages}) is messages
    with pytest.raises(ParamError) as info:
        chat_messages({"messages": [{"role": "user"}, {"content": "no role"}]})
    assert info.value.param == "messages.1"
    for bad in ([], "hi", None):
        with pytest.raises(ParamError):
            chat_messages({"messages": bad})


@pytest.mark.parametrize("role", ["wizard", "", 3, None, ["user"]])
def test_chat_messages_need_an_openai_role(role):
    with pytest.raises(ParamError) as info:
        chat_messages({"messages": [{"role": "user", "content": "a"}, {"role": role, "content": "b"}]})
    assert (info.value.param, info.value.code) == ("messages.1.role", "invalid_value")
