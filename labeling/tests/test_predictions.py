"""Requests with guided decoding per config, and Label Studio results from the
generated text: validity, NER offsets, scores."""

import json
import math
from types import SimpleNamespace

import pytest

from labeling.label_config import parse_label_config
from labeling.predictions import (
    build_requests,
    result_from,
    results_from,
    score_from_logprobs,
    span_candidates,
    span_offsets,
)

from .fakes import tokens

CHOICES = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="Positive"/><Choice value="Negative"/></Choices></View>'
)
NER = (
    '<View><Labels name="label" toName="text"><Label value="PER"/><Label value="LOC"/></Labels>'
    '<Text name="text" value="$text"/></View>'
)
MULTI = (
    '<View><Text name="a" value="$answer"/>'
    '<Choices name="ok" toName="a"><Choice value="Yes"/><Choice value="No"/></Choices>'
    '<Choices name="tags" toName="a" choice="multiple"><Choice value="Long"/><Choice value="Rude"/></Choices>'
    '<Rating name="stars" toName="a" maxRating="4"/><Number name="n" toName="a" min="1" max="9"/>'
    '<Number name="x" toName="a" min="0.5" max="2.5" step="0.1"/>'
    '<TextArea name="why" toName="a"/></View>'
)


def project_for(xml, **fields):
    config = parse_label_config(xml)
    defaults = {"temperature": 0.0, "max_tokens": 512, "seed": None, "prompt_templates": {}}
    return SimpleNamespace(parsed_config=lambda: config, templates=lambda: {}, **{**defaults, **fields}), config


def test_a_single_choice_uses_guided_choice_with_logprobs():
    project, _ = project_for(CHOICES, seed=7)
    (request,) = build_requests(project, [{"id": 1, "data": {"text": "Great!"}}])
    assert request["guided_choice"] == ["Positive", "Negative"]
    assert request["logprobs"] is True
    assert (request["temperature"], request["max_tokens"], request["seed"]) == (0.0, 512, 7)
    assert "Great!" in request["messages"][0]["content"]
    assert "response_format" not in request


def test_several_controls_use_a_json_schema_with_enums_and_bounds():
    project, _ = project_for(MULTI)
    (request,) = build_requests(project, [{"data": {"answer": "Fine."}}])
    schema = request["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["ok", "tags", "stars", "n", "x", "why"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["ok"] == {"type": "string", "enum": ["Yes", "No"]}
    assert props["tags"]["items"]["enum"] == ["Long", "Rude"] and props["tags"]["maxItems"] == 2
    assert props["stars"] == {"type": "integer", "enum": [1, 2, 3, 4]}
    assert props["n"] == {"type": "integer", "minimum": 1, "maximum": 9}
    assert props["x"] == {"type": "number", "minimum": 0.5, "maximum": 2.5}
    assert props["why"]["maxLength"] == 200
    assert "pattern" not in json.dumps(schema)  # xgrammar refuses it


def test_ner_schema_is_a_bounded_list_of_spans_from_the_text():
    project, _ = project_for(NER)
    (request,) = build_requests(project, [{"data": {"text": "Ann went to New-York, Ann said."}}])
    spans = request["response_format"]["json_schema"]["schema"]["properties"]["label"]
    assert spans["maxItems"] == 16
    assert spans["items"]["properties"]["label"]["enum"] == ["PER", "LOC"]
    candidates = spans["items"]["properties"]["text"]["enum"]
    assert candidates[:4] == ["Ann", "Ann went", "Ann went to", "Ann went to New-York"]
    assert "New-York, Ann" in candidates and "said" in candidates
    assert len(candidates) == len(set(candidates))


def test_long_ner_texts_get_a_bounded_free_string():
    assert span_candidates(" ".join(f"w{i}" for i in range(50)))
    text = " ".join(f"w{i}" for i in range(500))
    assert span_candidates(text) is None
    project, _ = project_for(NER)
    (request,) = build_requests(project, [{"data": {"text": text}}])
    span_text = request["response_format"]["json_schema"]["schema"]["properties"]["label"]["items"]["properties"][
        "text"
    ]
    assert span_text == {"type": "string", "minLength": 1, "maxLength": 100}


def test_a_task_without_its_text_is_not_asked():
    project, _ = project_for(CHOICES)
    assert build_requests(project, [{"data": {"other": "x"}}, {"data": "bad"}, {}]) == [None, None, None]


def test_guided_choice_result_and_score_over_all_tokens():
    _, config = project_for(CHOICES)
    prediction = result_from(config, {"id": 1, "data": {"text": "t"}}, "Negative", [("Neg", -0.5), ("ative", -0.1)])
    assert prediction.result == [
        {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["Negative"]}}
    ]
    assert prediction.score == pytest.approx(math.exp(-0.3))
    assert not prediction.error


def test_a_label_outside_the_choices_is_never_passed_on():
    _, config = project_for(CHOICES)
    prediction = result_from(config, {"data": {"text": "t"}}, "Maybe", tokens("Maybe"))
    assert prediction.result == [] and prediction.score is None and "not one of" in prediction.error


def test_multi_control_results_in_label_studios_shape():
    _, config = project_for(MULTI)
    answer = {"ok": "No", "tags": ["Rude", "Rude"], "stars": 3, "n": 4, "x": 1.5, "why": "Too curt."}
    prediction = result_from(config, {"data": {"answer": "Go away."}}, json.dumps(answer), tokens(json.dumps(answer)))
    values = {item["from_name"]: (item["type"], item["value"]) for item in prediction.result}
    assert values == {
        "ok": ("choices", {"choices": ["No"]}),
        "tags": ("choices", {"choices": ["Rude"]}),
        "stars": ("rating", {"rating": 3}),
        "n": ("number", {"number": 4}),
        "x": ("number", {"number": 1.5}),
        "why": ("textarea", {"text": ["Too curt."]}),
    }
    assert all(item["to_name"] == "a" for item in prediction.result)


def test_invalid_values_are_left_out_not_repaired():
    _, config = project_for(MULTI)
    answer = {"ok": "Perhaps", "tags": [], "stars": 9, "n": 40, "x": "1", "why": "  "}
    prediction = result_from(config, {"data": {"answer": "a"}}, json.dumps(answer), tokens(json.dumps(answer)))
    assert prediction.result == []
    assert "ok, tags, stars, n, x, why" in prediction.error


def test_truncated_json_gives_an_empty_result():
    _, config = project_for(MULTI)
    prediction = result_from(config, {"data": {"answer": "a"}}, '{"ok":"Ye', tokens('{"ok":"Ye'))
    assert prediction.result == [] and "not complete JSON" in prediction.error


def test_json_with_control_characters_in_strings_still_parses():
    _, config = project_for(MULTI)
    text = '{"ok":"Yes","tags":["Long"],"stars":1,"n":1,"x":1,"why":"line\nbreak"}'
    prediction = result_from(config, {"data": {"answer": "a"}}, text, tokens(text))
    assert {"from_name": "why", "to_name": "a", "type": "textarea", "value": {"text": ["line\nbreak"]}} in (
        prediction.result
    )


def test_score_uses_only_the_tokens_of_the_chosen_values():
    _, config = project_for(MULTI)
    text = '{"ok":"Yes","tags":["Long"],"stars":2,"n":3,"x":1,"why":"ok"}'
    # Structure tokens are certain (0); the tokens of the values have -1 each.
    values = {'"Yes"', '"Long"', "2", "3", "1", '"ok"'}
    pieces = [
        '{"ok":',
        '"Yes"',
        ',"tags":[',
        '"Long"',
        '],"stars":',
        "2",
        ',"n":',
        "3",
        ',"x":',
        "1",
        ',"why":',
        '"ok"',
        "}",
    ]
    token_logprobs = [(piece, -1.0 if piece in values else 0.0) for piece in pieces]
    prediction = result_from(config, {"data": {"answer": "a"}}, text, token_logprobs)
    assert prediction.score == pytest.approx(math.exp(-1.0))


def test_score_falls_back_to_all_tokens_when_they_do_not_spell_the_text():
    _, config = project_for(MULTI)
    text = '{"ok":"Yes","tags":["Long"],"stars":2,"n":3,"x":1,"why":"é"}'
    prediction = result_from(config, {"data": {"answer": "a"}}, text, [("bytes:\\xc3", -2.0), ("rest", 0.0)])
    assert prediction.score == pytest.approx(math.exp(-1.0))


@pytest.mark.parametrize(
    ("logprobs", "score"),
    [
        ([], None),
        ([0.0], 1.0),
        ([-1.0, -3.0], math.exp(-2.0)),
        ([-math.inf], 0.0),
        ([float("nan"), -1.0], math.exp(-1.0)),
    ],
)
def test_score_is_the_geometric_mean_probability(logprobs, score):
    assert score_from_logprobs(logprobs) == (pytest.approx(score) if score is not None else None)


class TestSpanOffsets:
    def test_exact_offsets(self):
        text = "Barack Obama visited Microsoft in Seattle."
        assert span_offsets(text, [("Seattle", "LOC"), ("Barack Obama", "PER")]) == [
            (34, 41, "Seattle", "LOC"),
            (0, 12, "Barack Obama", "PER"),
        ]

    def test_repeated_words_take_successive_occurrences(self):
        text = "Berlin and Berlin and Berlin"
        placed = span_offsets(text, [("Berlin", "LOC"), ("Berlin", "LOC")])
        assert [(s, e) for s, e, _, _ in placed] == [(0, 6), (11, 17)]
        assert all(text[s:e] == t for s, e, t, _ in placed)

    def test_one_more_than_there_are_is_dropped(self):
        assert len(span_offsets("Rome and Rome", [("Rome", "LOC")] * 3)) == 2

    def test_overlaps_allowed_across_labels_not_within_one(self):
        text = "New York City"
        placed = span_offsets(text, [("New York", "LOC"), ("York City", "LOC"), ("New York", "ORG")])
        assert placed == [(0, 8, "New York", "LOC"), (0, 8, "New York", "ORG")]

    def test_unicode_offsets_are_code_points(self):
        text = "😀 Café Zürich, naïve 東京 café"
        placed = span_offsets(text, [("Zürich", "LOC"), ("東京", "LOC"), ("café", "LOC")])
        assert placed == [(7, 13, "Zürich", "LOC"), (21, 23, "東京", "LOC"), (24, 28, "café", "LOC")]
        assert all(text[s:e] == t for s, e, t, _ in placed)

    def test_missing_and_blank_spans_are_dropped_and_whitespace_trimmed(self):
        assert span_offsets("Ann met Bob.", [("Carl", "PER"), ("  ", "PER"), (" Bob ", "PER")]) == [
            (8, 11, "Bob", "PER")
        ]

    def test_case_must_match(self):
        assert span_offsets("angela merkel", [("Angela Merkel", "PER")]) == []


def test_ner_result_items_have_ids_offsets_and_region_scores():
    _, config = project_for(NER)
    task = {"id": 9, "data": {"text": "Ann met Ann in Oslo."}}
    answer = {
        "label": [{"text": "Ann", "label": "PER"}, {"text": "Ann", "label": "PER"}, {"text": "Oslo", "label": "LOC"}]
    }
    text = json.dumps(answer, separators=(",", ":"))
    prediction = result_from(config, task, text, tokens(text))
    assert [(i["value"]["start"], i["value"]["end"], i["value"]["labels"]) for i in prediction.result] == [
        (0, 3, ["PER"]),
        (8, 11, ["PER"]),
        (15, 19, ["LOC"]),
    ]
    item = prediction.result[0]
    assert set(item) == {"id", "from_name", "to_name", "type", "value", "score"}
    assert len({i["id"] for i in prediction.result}) == 3
    # The same prediction again gives the same ids (deterministic).
    assert [i["id"] for i in result_from(config, task, text, tokens(text)).result] == [
        i["id"] for i in prediction.result
    ]


def test_results_from_keeps_task_order_and_isolates_failures():
    project, config = project_for(CHOICES)
    tasks = [{"id": i, "data": {"text": str(i)}} for i in range(3)]
    generations = [("Positive", tokens("Positive"), None), (None, [], "prompt too long"), None]
    predictions = results_from(project, tasks, generations, config)
    assert [len(p.result) for p in predictions] == [1, 0, 0]
    assert "prompt too long" in predictions[1].error
    assert "no text" in predictions[2].error
    assert predictions[0].entry("m@1") == {
        "result": predictions[0].result,
        "score": predictions[0].score,
        "model_version": "m@1",
    }
