"""Whether an annotation's result fits a project's labeling config.

Pure functions, no Django: the annotation store calls `result_problems` for
every annotation it receives and flags those with problems (admin shows the
reason); accuracy and training leave them out.
"""

from .label_config import object_text

# Result items that describe links or areas, not a control's answer.
NON_CONTROL_TYPES = {"relation"}


def _utf16_slice(text, start, end):
    """Label Studio's front end counts offsets in UTF-16 code units (JavaScript strings)."""
    raw = text.encode("utf-16-le")
    return raw[2 * start : 2 * end].decode("utf-16-le", errors="replace")


def _span_problem(value, text):
    start, end = value.get("start"), value.get("end")
    if isinstance(start, bool) or isinstance(end, bool) or not isinstance(start, int) or not isinstance(end, int):
        return "the span has no integer start/end"
    if text is None:
        return "the task has no text for the span"
    if not 0 <= start < end:
        return f"the span {start}-{end} is empty or negative"
    if end > len(text) and end > len(text.encode("utf-16-le")) // 2:
        return f"the span {start}-{end} ends past the text ({len(text)} characters)"
    given = value.get("text")
    if isinstance(given, str) and given not in (text[start:end], _utf16_slice(text, start, end)):
        return f"the span {start}-{end} is {text[start:end]!r} in the task, not {given[:50]!r}"
    return None


def _value_problem(control, value, text):
    """A control's value checked against the control; None when it fits."""
    if control.type == "choices":
        chosen = value.get("choices")
        if not isinstance(chosen, list) or not chosen:
            return "no choices"
        unknown = [c for c in chosen if c not in control.labels]
        if unknown:
            return f"choice {unknown[0]!r} is not in the config ({', '.join(control.labels)})"
        if not control.multiple and len(chosen) > 1:
            return f"{len(chosen)} choices for a single-choice control"
        return None
    if control.type == "labels":
        labels = value.get("labels")
        if not isinstance(labels, list) or not labels:
            return "a span without labels"
        unknown = [label for label in labels if label not in control.labels]
        if unknown:
            return f"label {unknown[0]!r} is not in the config ({', '.join(control.labels)})"
        return _span_problem(value, text)
    if control.type == "rating":
        rating = value.get("rating")
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= control.max_rating:
            return f"rating {rating!r} is not 1..{control.max_rating}"
        return None
    if control.type == "number":
        number = value.get("number")
        if isinstance(number, bool) or not isinstance(number, int | float):
            return f"number {number!r} is not a number"
        if (control.minimum is not None and number < control.minimum) or (
            control.maximum is not None and number > control.maximum
        ):
            return f"number {number!r} is outside the config's range"
        return None
    texts = value.get("text")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return "the text is not a list of strings"
    return None


def result_problems(config, result, data):
    """The reasons the annotation `result` does not fit `config` (a LabelConfig)
    for task `data`; empty when it fits. Checked: every item names a control and
    object of the config, choices and labels exist in their control, ratings and
    numbers are in range, NER spans lie inside the text and match its characters.
    Items of controls the backend does not predict (skipped ones) are checked for
    their names only."""
    if not isinstance(result, list):
        return ["the result is not a list"]
    controls = {c.name: c for c in config.controls}
    skipped = {s.name for s in config.skipped}
    problems = []
    for index, item in enumerate(result):
        where = f"item {index}"
        if not isinstance(item, dict):
            problems.append(f"{where} is not an object")
            continue
        if item.get("type") in NON_CONTROL_TYPES:
            continue
        from_name, to_name, value = item.get("from_name"), item.get("to_name"), item.get("value")
        where = f"{where} ({from_name})"
        if from_name not in controls and from_name not in skipped:
            problems.append(f"{where}: no control named {from_name!r} in the config")
            continue
        if to_name not in config.objects:
            problems.append(f"{where}: no object named {to_name!r} in the config")
            continue
        if from_name in skipped:
            continue
        control = controls[from_name]
        if to_name != control.to_name:
            problems.append(f"{where}: to_name {to_name!r}, the control labels {control.to_name!r}")
            continue
        if not isinstance(value, dict):
            problems.append(f"{where}: no value")
            continue
        text = object_text(config.object_for(control), data)
        problem = _value_problem(control, value, text)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems
