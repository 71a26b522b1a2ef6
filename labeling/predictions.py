"""Label Studio predictions from generated text: the chat request each task
gets (with guided decoding, so every answer is valid for the labeling config),
and the Label Studio result built from the text and its token log-probabilities.

Both halves work on their own: /predict runs them around one
workers.inference.chat call, the bulk flow around a vllm-batch batch.
"""

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass

from .label_config import object_text
from .prompts import build_prompt

logger = logging.getLogger(__name__)

MAX_SPANS = 16  # entities per NER control and task
MAX_SPAN_CHARS = 100
MAX_TEXTAREA_CHARS = 200
# NER span texts are chosen from the text's word n-grams up to this length, so every
# span can be placed; texts with more candidates than MAX_SPAN_CANDIDATES get a free
# (length-bounded) string instead, and spans not found in the text are dropped.
MAX_SPAN_WORDS = 4
MAX_SPAN_CANDIDATES = 400
WORD = re.compile(r"\w+(?:['’.-]\w+)*")


@dataclass
class TaskPrediction:
    """One task's prediction: Label Studio's result items, the score, and why the
    result is empty when it is."""

    result: list
    score: float | None
    error: str = ""

    def entry(self, model_version):
        return {"result": self.result, "score": self.score, "model_version": model_version}


def span_candidates(text):
    """The word n-grams of `text` (1 to MAX_SPAN_WORDS words, as written, in order
    of appearance), or None when there are more than MAX_SPAN_CANDIDATES."""
    words = [(m.start(), m.end()) for m in WORD.finditer(text)]
    candidates = {}
    for i, (start, _) in enumerate(words):
        for _, end in words[i : i + MAX_SPAN_WORDS]:
            candidates.setdefault(text[start:end], None)
            if len(candidates) > MAX_SPAN_CANDIDATES:
                return None
    return list(candidates)


def _control_schema(control, text):
    if control.type == "choices":
        if control.multiple:
            item = {"type": "string", "enum": list(control.labels)}
            return {"type": "array", "items": item, "minItems": 1, "maxItems": len(control.labels)}
        return {"type": "string", "enum": list(control.labels)}
    if control.type == "labels":
        candidates = span_candidates(text)
        if candidates:
            span_text = {"type": "string", "enum": candidates}
        else:
            span_text = {"type": "string", "minLength": 1, "maxLength": max(1, min(MAX_SPAN_CHARS, len(text)))}
        span = {
            "type": "object",
            "properties": {
                "text": span_text,
                "label": {"type": "string", "enum": list(control.labels)},
            },
            "required": ["text", "label"],
            "additionalProperties": False,
        }
        return {"type": "array", "items": span, "maxItems": MAX_SPANS}
    if control.type == "rating":
        return {"type": "integer", "enum": list(range(1, control.max_rating + 1))}
    if control.type == "textarea":
        return {"type": "string", "minLength": 1, "maxLength": MAX_TEXTAREA_CHARS}
    schema = {"type": "integer" if control.integer else "number"}
    if control.minimum is not None:
        schema["minimum"] = math.ceil(control.minimum) if control.integer else control.minimum
    if control.maximum is not None:
        schema["maximum"] = math.floor(control.maximum) if control.integer else control.maximum
    return schema


def uses_guided_choice(config):
    """A single single-choice control: the answer is one of its labels, as plain text."""
    return len(config.controls) == 1 and config.controls[0].type == "choices" and not config.controls[0].multiple


def answer_schema(config, data):
    """The JSON schema of the answer for several controls (or one that is not a
    single choice): one property per control, every one required."""
    properties = {c.name: _control_schema(c, object_text(config.object_for(c), data) or "") for c in config.controls}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


# Answers ---------------------------------------------------------------------


def _control_answer(control, items, text):
    """A control's value in the guided answer format from a Label Studio result's
    items, or None when the result has no valid value for it."""
    mine = [item for item in items if isinstance(item, dict) and item.get("from_name") == control.name]
    values = [item.get("value") if isinstance(item.get("value"), dict) else {} for item in mine]
    if control.type == "choices":
        chosen = [c for v in values for c in (v.get("choices") or []) if c in control.labels]
        chosen = list(dict.fromkeys(chosen))
        if not chosen:
            return None
        return chosen if control.multiple else chosen[0]
    if control.type == "labels":
        spans = []
        for value in values:
            labels = [label for label in (value.get("labels") or []) if label in control.labels]
            span_text = value.get("text")
            if (
                not isinstance(span_text, str)
                and isinstance(value.get("start"), int)
                and isinstance(value.get("end"), int)
            ):
                span_text = text[value["start"] : value["end"]]
            if isinstance(span_text, str) and span_text.strip() and labels:
                spans.append({"text": span_text, "label": labels[0]})
        return spans[:MAX_SPANS]
    for value in values:
        if control.type == "rating":
            rating = value.get("rating")
            if isinstance(rating, int) and not isinstance(rating, bool) and 1 <= rating <= control.max_rating:
                return rating
        elif control.type == "textarea":
            texts = value.get("text")
            texts = [texts] if isinstance(texts, str) else texts
            written = " ".join(t.strip() for t in (texts or []) if isinstance(t, str) and t.strip())
            if written:
                return written[:MAX_TEXTAREA_CHARS]
        elif control.type == "number":
            number = value.get("number")
            if isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number):
                return int(number) if control.integer else number
    return None


def answer_text(config, result, data):
    """The text the model would write for an annotation's `result` on a task with
    `data`, in the guided format its requests use: the label for a single single-choice
    control, else the JSON object with one key per control. None when the result lacks
    a valid value for a control (an empty NER list is a valid value). Few-shot examples
    and the fine-tuning export both use it."""
    items = result if isinstance(result, list) else []
    answer = {}
    for control in config.controls:
        value = _control_answer(control, items, object_text(config.object_for(control), data) or "")
        if value is None:
            return None
        answer[control.name] = value
    if uses_guided_choice(config):
        return answer[config.controls[0].name]
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":"))


# Requests --------------------------------------------------------------------


def _askable(config, data):
    return (
        isinstance(data, dict)
        and bool(config.controls)
        and all(object_text(config.object_for(c), data) is not None for c in config.controls)
    )


def build_request(project, config, templates, task, examples=()):
    """The chat body (without `model`) for one task, or None when the task lacks
    the text its controls are about. `examples` are (task data, answer text) pairs
    that go before the task as earlier turns of the conversation (few-shot)."""
    data = task.get("data") if isinstance(task, dict) else None
    if not _askable(config, data):
        return None
    messages = []
    for example_data, example_answer in examples:
        messages.append({"role": "user", "content": build_prompt(config, templates, example_data)})
        messages.append({"role": "assistant", "content": example_answer})
    body = {
        "messages": [*messages, {"role": "user", "content": build_prompt(config, templates, data)}],
        "temperature": project.temperature,
        "max_tokens": project.max_tokens,
        "logprobs": True,
        # The worker drops logprobs when top_logprobs is 0 (vLLM's "chosen token only").
        "top_logprobs": 1,
    }
    if project.seed is not None:
        body["seed"] = project.seed
    if uses_guided_choice(config):
        body["guided_choice"] = list(config.controls[0].labels)
    else:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "labels", "schema": answer_schema(config, data), "strict": True},
        }
    return body


def build_requests(project, tasks, config=None, examples=None):
    """One chat body per task, in order (None for a task that cannot be asked).
    `examples`, when given, holds each task's few-shot (data, answer text) pairs."""
    config = config or project.parsed_config()
    templates = project.templates()
    examples = examples or [()] * len(tasks)
    return [build_request(project, config, templates, t, e) for t, e in zip(tasks, examples, strict=True)]


# Scores --------------------------------------------------------------------


def score_from_logprobs(logprobs):
    """exp(mean log-probability): the geometric mean of the tokens' probabilities,
    in [0, 1]; None without usable numbers."""
    values = [lp for lp in logprobs if isinstance(lp, int | float) and not math.isnan(lp)]
    if not values:
        return None
    mean = sum(values) / len(values)
    return 0.0 if mean == -math.inf else min(1.0, max(0.0, math.exp(mean)))


def _token_spans(text, token_logprobs):
    """(start, end, logprob) of each generated token in `text`, or None when the
    tokens do not spell the text (byte-level pieces of a character)."""
    spans, position = [], 0
    for token, logprob in token_logprobs:
        spans.append((position, position + len(token), logprob))
        position += len(token)
    if "".join(token for token, _ in token_logprobs) != text:
        return None
    return spans


def _decisive_logprobs(text, token_logprobs, ranges):
    """Log-probabilities of the tokens overlapping the character ranges; all tokens'
    when the ranges are unknown or the tokens cannot be placed."""
    spans = _token_spans(text, token_logprobs)
    if spans is None or not ranges:
        return [lp for _, lp in token_logprobs]
    chosen = [lp for start, end, lp in spans if any(start < r_end and r_start < end for r_start, r_end in ranges)]
    return chosen or [lp for _, lp in token_logprobs]


class _Locator:
    """Finds where JSON values were written in the generated text, left to right,
    so the score can use the tokens of the chosen values only."""

    def __init__(self, text):
        self.text = text
        self.position = 0

    def skip_key(self, key):
        self.find(key, suffix=":")

    def find(self, value, suffix=""):
        needle = json.dumps(value, ensure_ascii=False, separators=(",", ":")) + suffix
        index = self.text.find(needle, self.position)
        if index < 0:
            return None
        self.position = index + len(needle)
        return (index, index + len(needle))


# Results -------------------------------------------------------------------


def _placements(text, spans):
    placed = []
    for index, (span_text, label) in enumerate(spans):
        needle = span_text.strip()
        if not needle:
            continue
        start = text.find(needle)
        while start >= 0:
            end = start + len(needle)
            if not any(lb == label and start < e and s < end for _, s, e, _, lb in placed):
                placed.append((index, start, end, needle, label))
                break
            start = text.find(needle, start + 1)
    return placed


def span_offsets(text, spans):
    """Places (span text, label) pairs in `text`: [(start, end, span text, label)]
    with text[start:end] == span text (Python str offsets, i.e. code points).

    Deterministic: each span takes the leftmost occurrence that does not overlap a
    span already placed with the same label, so a repeated word labelled twice gets
    its first and second occurrence. Spans that are not in the text are dropped
    (surrounding whitespace is trimmed first); different labels may overlap, as
    Label Studio allows."""
    return [(start, end, needle, label) for _, start, end, needle, label in _placements(text, spans)]


def _region_id(task_id, control_name, start, end, label):
    key = f"{task_id}:{control_name}:{start}:{end}:{label}"
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def _item(control, kind, value):
    return {"from_name": control.name, "to_name": control.to_name, "type": kind, "value": value}


def _control_items(control, value, text, task_id, locator, token_logprobs, generated):
    """Label Studio result items for one control's answer, and the character ranges
    of the generated text that decided them; ([], []) for an invalid answer."""
    if control.type == "choices":
        values = value if control.multiple else [value]
        if not isinstance(values, list) or not values or not all(v in control.labels for v in values):
            return [], []
        chosen = list(dict.fromkeys(values))
        ranges = [r for r in (locator.find(v) for v in chosen) if r]
        return [_item(control, "choices", {"choices": chosen})], ranges
    if control.type == "rating":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= control.max_rating:
            return [], []
        return [_item(control, "rating", {"rating": value})], [r for r in [locator.find(value)] if r]
    if control.type == "textarea":
        if not isinstance(value, str) or not value.strip():
            return [], []
        return [_item(control, "textarea", {"text": [value]})], [r for r in [locator.find(value)] if r]
    if control.type == "number":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return [], []
        if (control.minimum is not None and value < control.minimum) or (
            control.maximum is not None and value > control.maximum
        ):
            return [], []
        return [_item(control, "number", {"number": value})], [r for r in [locator.find(value)] if r]
    # labels (NER)
    if not isinstance(value, list):
        return [], []
    pairs, pair_ranges = [], []
    for entry in value:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("text"), str)
            or entry.get("label") not in control.labels
        ):
            continue
        span_range, label_range = locator.find(entry["text"]), locator.find(entry["label"])
        pairs.append((entry["text"], entry["label"]))
        pair_ranges.append((span_range, label_range))
    items, ranges = [], []
    for index, start, end, span_text, label in _placements(text, pairs):
        own = [r for r in pair_ranges[index] if r]
        item = {
            "id": _region_id(task_id, control.name, start, end, label),
            **_item(control, "labels", {"start": start, "end": end, "text": span_text, "labels": [label]}),
        }
        region_score = score_from_logprobs(_decisive_logprobs(generated, token_logprobs, own))
        if region_score is not None:
            item["score"] = region_score
        items.append(item)
        ranges.extend(own)
    return items, ranges


def result_from(config, task, text, token_logprobs):
    """A TaskPrediction from one task's generated text and its [(token, logprob)]."""
    data = task.get("data") if isinstance(task, dict) else {}
    task_id = task.get("id") if isinstance(task, dict) else None
    token_logprobs = [(str(t), lp) for t, lp in (token_logprobs or [])]
    if text is None:
        return TaskPrediction([], None, "no text was generated")
    if uses_guided_choice(config):
        control = config.controls[0]
        if text not in control.labels:
            return TaskPrediction([], None, f"the answer {text[:100]!r} is not one of the choices")
        score = score_from_logprobs([lp for _, lp in token_logprobs])
        return TaskPrediction([_item(control, "choices", {"choices": [text]})], score)
    try:
        answer = json.loads(text, strict=False)
    except ValueError:
        return TaskPrediction([], None, f"the answer is not complete JSON: {text[:100]!r}")
    if not isinstance(answer, dict):
        return TaskPrediction([], None, "the answer is not a JSON object")
    locator = _Locator(text)
    result, ranges, left_out = [], [], []
    for control in config.controls:
        if control.name not in answer:
            left_out.append(control.name)
            continue
        locator.skip_key(control.name)
        object_value = object_text(config.object_for(control), data) or ""
        items, control_ranges = _control_items(
            control, answer[control.name], object_value, task_id, locator, token_logprobs, text
        )
        if not items and control.type != "labels":
            left_out.append(control.name)
        result.extend(items)
        ranges.extend(control_ranges)
    score = score_from_logprobs(_decisive_logprobs(text, token_logprobs, ranges))
    error = f"no valid answer for {', '.join(left_out)}" if left_out else ""
    return TaskPrediction(result, score, error)


def results_from(project, tasks, generations, config=None):
    """TaskPredictions for `tasks` from their generations, in order. Each generation
    is (text, token_logprobs, error) with error None on success; a task that was
    not asked (None) or failed gets an empty result."""
    config = config or project.parsed_config()
    predictions = []
    for task, generation in zip(tasks, generations, strict=True):
        if generation is None:
            predictions.append(TaskPrediction([], None, "the task has no text for the labeling config"))
            continue
        text, token_logprobs, error = generation
        if error:
            predictions.append(TaskPrediction([], None, f"generation failed: {error}"))
            continue
        predictions.append(result_from(config, task, text, token_logprobs))
    return predictions
