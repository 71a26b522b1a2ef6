"""Prompt templates: defaults per control, safe rendering, preview."""

import pytest

from labeling.label_config import parse_label_config
from labeling.prompts import (
    TemplateError,
    build_prompt,
    check_template,
    default_templates,
    effective_templates,
    preview,
    render,
)

CHOICES = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="Positive"/><Choice value="Negative"/></Choices></View>'
)
MULTI = (
    '<View><Text name="q" value="$question"/><Text name="a" value="$answer"/>'
    '<Choices name="ok" toName="a"><Choice value="Yes"/><Choice value="No"/></Choices>'
    '<Rating name="stars" toName="a" maxRating="4"/><Number name="n" toName="a" min="1" max="9"/>'
    '<Choices name="topic" toName="q" choice="multiple"><Choice value="Math"/><Choice value="Art"/></Choices></View>'
)


def test_single_choice_prompt_has_the_text_and_the_labels():
    prompt = build_prompt(parse_label_config(CHOICES), {}, {"text": "I love it."})
    assert "I love it." in prompt
    assert "Positive, Negative" in prompt
    assert "JSON" not in prompt


def test_several_controls_show_each_text_once_and_ask_for_json_keys():
    config = parse_label_config(MULTI)
    prompt = build_prompt(config, {}, {"question": "What is 2+2?", "answer": "Four, roughly."})
    assert prompt.count("Four, roughly.") == 1
    assert prompt.count("What is 2+2?") == 1
    assert "1 to 4" in prompt and "between 1 and 9" in prompt and "Math, Art" in prompt
    assert prompt.endswith("Answer with a JSON object with the keys: ok, stars, n, topic.")
    templates = default_templates(config)
    assert "{text}" in templates["ok"] and "{text}" not in templates["stars"] and "{text}" in templates["topic"]


def test_edited_templates_replace_the_defaults_and_can_use_task_fields():
    config = parse_label_config(MULTI)
    templates = effective_templates(config, {"ok": "Q: {question}\nA: {text}\nIs it right? {labels}", "gone": "x"})
    assert set(templates) == {"ok", "stars", "n", "topic"}
    prompt = build_prompt(config, templates, {"question": "2+2?", "answer": "4"})
    assert prompt.startswith("Q: 2+2?\nA: 4\nIs it right? Yes, No")


@pytest.mark.parametrize(
    "template",
    ["{text.__class__}", "{text[0]}", "{text!r}", "{text:>10}", "{0}", "{}", "{unknown}", "{text", "}"],
)
def test_templates_cannot_reach_attributes_or_unknown_names(template):
    config = parse_label_config(CHOICES)
    with pytest.raises(TemplateError):
        check_template(config, config.controls[0], template)


def test_render_leaves_values_alone():
    # Braces inside values are data, never placeholders.
    assert render("[{text}] {{literal}}", {"text": "{labels} {0.__class__}"}) == "[{labels} {0.__class__}] {literal}"


def test_preview_uses_sample_data_or_shows_the_error():
    config = parse_label_config(CHOICES)
    assert "(the task's text)" in preview(config, {})
    assert "Real text" in preview(config, {}, {"text": "Real text"})
    assert preview(config, {"sentiment": "{nope}"}).startswith("Template error:")
