"""Label Studio labeling configs (the XML of a project's "Labeling Interface"):
which object tags hold the task's text and which control tags we can fill in.

Parsing only, no Django. The XML comes from Label Studio (and so from its users):
it is parsed with defusedxml, so entities and DTDs are refused instead of expanded.
"""

import logging
import re
from dataclasses import dataclass, field
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

logger = logging.getLogger(__name__)

# Object tags whose content is text we can put into a prompt.
TEXT_OBJECTS = {"text", "hypertext", "paragraphs"}
# Control tags we predict, by lower-case tag name -> Label Studio's result type.
SUPPORTED_CONTROLS = {
    "choices": "choices",
    "labels": "labels",
    "rating": "rating",
    "textarea": "textarea",
    "number": "number",
}
VARIABLE = re.compile(r"^\$([A-Za-z_][\w.-]*)$")
DEFAULT_MAX_RATING = 5


class LabelConfigError(ValueError):
    """The config is not XML we accept; the message says why, for a 400."""


@dataclass(frozen=True)
class ObjectTag:
    name: str
    tag: str  # lower-case: text, hypertext, paragraphs, image...
    value: str  # the raw `value` attribute, e.g. "$text"
    attrs: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def variable(self):
        """The task data key this object shows ("text" for value="$text"), or None."""
        match = VARIABLE.match(self.value or "")
        return match.group(1) if match else None

    @property
    def is_text(self):
        return self.tag in TEXT_OBJECTS


@dataclass(frozen=True)
class Control:
    name: str
    tag: str  # the tag as written, e.g. "Choices"
    type: str  # Label Studio's result type: choices, labels, rating, textarea, number
    to_name: str
    labels: tuple = ()  # Choice / Label values, as results must carry them
    multiple: bool = False
    max_rating: int = DEFAULT_MAX_RATING
    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False  # Number with an integer step


@dataclass(frozen=True)
class Skipped:
    name: str
    tag: str
    reason: str


@dataclass(frozen=True)
class LabelConfig:
    objects: dict  # name -> ObjectTag
    controls: tuple  # supported controls, in document order
    skipped: tuple  # Skipped, one per control left out

    def object_for(self, control):
        return self.objects[control.to_name]

    @property
    def variables(self):
        """Task data keys the supported controls' objects read, in order."""
        seen = []
        for control in self.controls:
            variable = self.object_for(control).variable
            if variable and variable not in seen:
                seen.append(variable)
        return seen


def _number_attr(element, name, kind=float):
    raw = element.get(name)
    if raw in (None, ""):
        return None
    try:
        return kind(raw)
    except ValueError:
        raise LabelConfigError(
            f"<{element.tag} name={element.get('name')!r}> has a non-numeric {name}={raw!r}."
        ) from None


def _option_values(element, child_tag):
    """The values of <Choice>/<Label> children (anywhere below, as Label Studio
    allows <View> wrappers); `alias` replaces the value in results when set."""
    values = []
    for child in element.iter():
        if child is element or child.tag.lower() != child_tag:
            continue
        value = child.get("alias") or child.get("value")
        if value is None:
            raise LabelConfigError(f"A <{child.tag}> in <{element.tag} name={element.get('name')!r}> has no value.")
        if value not in values:
            values.append(value)
    return tuple(values)


def _walk(element, hidden=False):
    """(element, hidden) for every element; hidden when an ancestor View shows conditionally."""
    for child in element:
        if not isinstance(child.tag, str):
            continue
        child_hidden = hidden or any(child.get(a) for a in ("visibleWhen", "whenTagName"))
        yield child, child_hidden
        yield from _walk(child, child_hidden)


def _control(element, objects):
    tag = element.tag.lower()
    name = element.get("name")
    to_name = (element.get("toName") or "").split(",")[0].strip()
    kind = SUPPORTED_CONTROLS[tag]
    target = objects.get(to_name)
    if target is None:
        return Skipped(name, element.tag, f"toName={to_name!r} names no object tag")
    if not target.is_text:
        return Skipped(name, element.tag, f"its object <{target.tag}> is not text")
    if target.variable is None:
        return Skipped(name, element.tag, f"its object has no $variable value ({target.value!r})")
    if kind == "choices":
        labels = _option_values(element, "choice")
        if not labels:
            return Skipped(name, element.tag, "it has no <Choice> values")
        return Control(name, element.tag, kind, to_name, labels, multiple=element.get("choice") == "multiple")
    if kind == "labels":
        if target.tag != "text":
            return Skipped(name, element.tag, f"span labels are only predicted on <Text>, not <{target.tag}>")
        labels = _option_values(element, "label")
        if not labels:
            return Skipped(name, element.tag, "it has no <Label> values")
        return Control(name, element.tag, kind, to_name, labels)
    if kind == "rating":
        max_rating = _number_attr(element, "maxRating", int) or DEFAULT_MAX_RATING
        if max_rating < 1:
            return Skipped(name, element.tag, f"maxRating={max_rating} leaves nothing to choose")
        return Control(name, element.tag, kind, to_name, max_rating=max_rating)
    if kind == "number":
        minimum, maximum = _number_attr(element, "min"), _number_attr(element, "max")
        if minimum is not None and maximum is not None and minimum > maximum:
            return Skipped(name, element.tag, f"min={minimum:g} is above max={maximum:g}")
        step = _number_attr(element, "step")
        integer = step is None or float(step).is_integer()
        return Control(name, element.tag, kind, to_name, minimum=minimum, maximum=maximum, integer=integer)
    return Control(name, element.tag, kind, to_name)


def parse_label_config(xml):
    """A LabelConfig from Label Studio's config XML; LabelConfigError when it is
    not well-formed, uses DTDs or entities, or has no object tag."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("The label config is empty.")
    try:
        root = SafeET.fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise LabelConfigError(f"The label config uses a forbidden XML construct ({type(exc).__name__}).") from None
    except ParseError as exc:
        raise LabelConfigError(f"The label config is not well-formed XML: {exc}.") from None

    elements = [(root, False), *_walk(root)]
    objects = {}
    for element, _hidden in elements:
        name, value = element.get("name"), element.get("value")
        if name and value is not None and not element.get("toName"):
            objects[name] = ObjectTag(name, element.tag.lower(), value, dict(element.attrib))
    if not objects:
        raise LabelConfigError('The label config has no object tag (such as <Text name=... value="$..."/>).')

    controls, skipped = [], []
    for element, hidden in elements:
        if not element.get("toName"):
            continue
        name = element.get("name")
        if not name:
            raise LabelConfigError(f"A <{element.tag}> control has no name.")
        if any(c.name == name for c in controls) or any(s.name == name for s in skipped):
            raise LabelConfigError(f"Two controls are named {name!r}.")
        if element.tag.lower() not in SUPPORTED_CONTROLS:
            skipped.append(Skipped(name, element.tag, "this control type is not supported"))
        elif element.get("perRegion") in ("true", "1"):
            skipped.append(Skipped(name, element.tag, "perRegion controls describe regions, not the task"))
        elif hidden or element.get("visibleWhen") or element.get("whenTagName"):
            skipped.append(Skipped(name, element.tag, "it is shown only conditionally (visibleWhen/whenTagName)"))
        else:
            result = _control(element, objects)
            (skipped if isinstance(result, Skipped) else controls).append(result)
    return LabelConfig(objects=objects, controls=tuple(controls), skipped=tuple(skipped))


def log_skipped(config, project=None):
    for item in config.skipped:
        logger.info("Label Studio project %s: control %s <%s> left out: %s", project, item.name, item.tag, item.reason)


def object_text(obj, data):
    """The text an object tag shows for task `data`, or None when the task lacks it."""
    variable = obj.variable
    if variable is None or not isinstance(data, dict) or variable not in data:
        return None
    value = data[variable]
    if obj.tag == "paragraphs" and isinstance(value, list):
        name_key = obj.attrs.get("nameKey", "author")
        text_key = obj.attrs.get("textKey", "text")
        lines = []
        for item in value:
            if isinstance(item, dict):
                speaker = item.get(name_key)
                said = item.get(text_key, "")
                lines.append(f"{speaker}: {said}" if speaker else str(said))
        return "\n".join(lines)
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None
