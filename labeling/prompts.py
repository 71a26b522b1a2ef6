"""Prompts for pre-annotation: one template per control, `{placeholder}` style.

Templates are edited in the admin, so they are rendered without str.format's
attribute and index access: only plain `{name}` fields from a fixed mapping.
"""

import string

from .label_config import object_text

DEFAULT_TEMPLATES = {
    "choices": "Classify the following text.\n\n{text}\n\nAnswer with one of: {labels}.",
    "choices_multiple": "Which of these labels apply to the following text?\n\n{text}\n\nLabels: {labels}.",
    "labels": (
        "Find the named entities in the following text. For each one give its exact text, "
        "copied as it appears, and one label from: {labels}.\n\n{text}"
    ),
    "rating": "Rate the following text from 1 to {max_rating}.\n\n{text}",
    "textarea": "Write a short answer for '{name}' about the following text.\n\n{text}",
    "number": "Give a number for '{name}'{range} about the following text.\n\n{text}",
}
# Several controls over one text: the text is shown once, each control adds its question.
FOLLOW_UP_TEMPLATES = {
    "choices": "{name}: one of {labels}.",
    "choices_multiple": "{name}: the labels that apply, from {labels}.",
    "labels": "{name}: the named entities, each with its exact text and one label from {labels}.",
    "rating": "{name}: a rating from 1 to {max_rating}.",
    "textarea": "{name}: a short text answer.",
    "number": "{name}: a number{range}.",
}
JSON_INSTRUCTION = "Answer with a JSON object with the keys: {keys}."


class TemplateError(ValueError):
    pass


def _template_kind(control):
    return "choices_multiple" if control.type == "choices" and control.multiple else control.type


def default_templates(config):
    """{control name: template} for a parsed config. The first control over each
    object carries the object's text; the others ask their question only."""
    templates, shown = {}, set()
    for control in config.controls:
        kind = _template_kind(control)
        if control.to_name in shown:
            templates[control.name] = FOLLOW_UP_TEMPLATES[kind]
        else:
            shown.add(control.to_name)
            templates[control.name] = DEFAULT_TEMPLATES[kind]
    return templates


def effective_templates(config, templates):
    """The stored templates of the config's controls, defaults for the missing ones."""
    defaults = default_templates(config)
    templates = templates if isinstance(templates, dict) else {}
    return {
        name: templates[name] if isinstance(templates.get(name), str) and templates[name].strip() else default
        for name, default in defaults.items()
    }


def _fields(template):
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"Bad braces in template: {exc}. Write {{{{ and }}}} for literal braces.") from None
    for literal, field_name, spec, conversion in parsed:
        if field_name is None:
            yield literal, None
            continue
        if not field_name.isidentifier() or spec or conversion:
            raise TemplateError(
                f"Placeholder {{{field_name}}} is not allowed: use plain names like {{text}} "
                "(no attributes, indexes, conversions or format specs)."
            )
        yield literal, field_name


def placeholders(config, control):
    """The names a control's template may use, with what each stands for."""
    names = {
        "text": "the text of the control's object",
        "name": "the control's name",
        "labels": "the allowed labels, comma-separated",
        "max_rating": "the highest rating",
        "range": "' between MIN and MAX' when the Number has bounds",
    }
    for variable in config.variables:
        names.setdefault(variable, "this task data field")
    return names


def check_template(config, control, template):
    """Raises TemplateError when the template uses a placeholder it cannot have."""
    allowed = placeholders(config, control)
    for _literal, name in _fields(template):
        if name is not None and name not in allowed:
            raise TemplateError(f"Unknown placeholder {{{name}}}; available: {', '.join(sorted(allowed))}.")


def _range(control):
    if control.minimum is not None and control.maximum is not None:
        return f" between {control.minimum:g} and {control.maximum:g}"
    if control.minimum is not None:
        return f" of at least {control.minimum:g}"
    if control.maximum is not None:
        return f" of at most {control.maximum:g}"
    return ""


def _values(config, control, data):
    values = {}
    for key, value in (data or {}).items():
        if isinstance(key, str) and key.isidentifier() and isinstance(value, str | int | float):
            values[key] = str(value)
    values.update(
        text=object_text(config.object_for(control), data) or "",
        name=control.name,
        labels=", ".join(control.labels),
        max_rating=str(control.max_rating),
        range=_range(control),
    )
    return values


def render(template, values):
    out = []
    for literal, name in _fields(template):
        out.append(literal)
        if name is not None:
            if name not in values:
                raise TemplateError(f"Unknown placeholder {{{name}}}.")
            out.append(values[name])
    return "".join(out)


def build_prompt(config, templates, data):
    """The user message for one task: each control's rendered template, and for
    several controls the JSON keys the answer must have."""
    templates = effective_templates(config, templates)
    parts = [render(templates[c.name], _values(config, c, data)) for c in config.controls]
    if len(config.controls) > 1:
        parts.append(JSON_INSTRUCTION.format(keys=", ".join(c.name for c in config.controls)))
    return "\n\n".join(parts)


def sample_data(config):
    """Task data for a preview when no real task is at hand: each variable named after itself."""
    return {variable: f"(the task's {variable})" for variable in config.variables}


def preview(config, templates, data=None):
    """The prompt a task would get, or the error the templates cause."""
    try:
        return build_prompt(config, templates, data if isinstance(data, dict) else sample_data(config))
    except TemplateError as exc:
        return f"Template error: {exc}"
