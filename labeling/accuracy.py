"""Predictions scored against ground truth, in Label Studio's own result format.

Pure functions, no Django: each takes `items`, a list of
`(task_id, prediction, ground_truth)`, where `prediction` is None (the task has no
prediction) or a Label Studio `result` list, and `ground_truth` is a `result` list
(a prediction or annotation object with a "result" key is accepted too; a task
whose ground truth is None is skipped). Every function returns a JSON-serialisable
dict; a figure that is undefined (0/0) is None.

Rules shared by every control:
- `tasks` counts the tasks with ground truth for the control, `predicted` those of
  them with a prediction for it, `coverage` = predicted / tasks.
- A task without a prediction counts as wrong: `accuracy` is over all `tasks`,
  `accuracy_predicted` over the predicted ones only. In per-label counts its true
  labels (or spans) are false negatives, so recall falls and precision does not.
- Per label: precision = TP / (TP + FP), recall = TP / (TP + FN),
  F1 = 2 TP / (2 TP + FP + FN). A label nobody used (no support, never predicted)
  has F1 None and is left out of macro F1; a label with support that is never
  predicted has F1 0 and counts. Micro F1 pools TP, FP and FN over the labels.
- Label order: the `labels` given (the label config's order), then any other label
  met in the data, sorted.
"""

from collections import Counter

__all__ = [
    "accuracy_by_control",
    "multi_choice_metrics",
    "rating_metrics",
    "single_choice_metrics",
    "span_metrics",
]


def _ratio(num, den):
    return num / den if den else None


def _result(value):
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, dict) and isinstance(value.get("result"), list):
        return value["result"]
    raise ValueError(f"expected a Label Studio result list, got {type(value).__name__}")


def _rows(items):
    """(task_id, prediction result or None, truth result) with no truth skipped; one row per task."""
    seen = set()
    for task_id, prediction, truth in items:
        if task_id in seen:
            raise ValueError(f"task {task_id} appears more than once")
        seen.add(task_id)
        truth = _result(truth)
        if truth is not None:
            yield task_id, _result(prediction), truth


def _items_of(result, kind, from_name):
    return [
        item
        for item in result
        if str(item.get("type", "")).lower() == kind and (from_name is None or item.get("from_name") == from_name)
    ]


def _choices(result, from_name):
    """The choices picked for the control, in order, without repeats; None when it has no item."""
    items = _items_of(result, "choices", from_name)
    if not items:
        return None
    picked = []
    for item in items:
        for choice in item.get("value", {}).get("choices", []):
            if choice not in picked:
                picked.append(choice)
    return picked


def _label_order(labels, seen):
    given = list(labels or [])
    return given + sorted(set(seen) - set(given), key=str)


def _per_label(order, tp, fp, fn):
    """Per-label figures plus macro and micro F1 from TP / FP / FN counters."""
    per_label = {}
    for label in order:
        t, p, n = tp[label], fp[label], fn[label]
        per_label[label] = {
            "precision": _ratio(t, t + p),
            "recall": _ratio(t, t + n),
            "f1": _ratio(2 * t, 2 * t + p + n),
            "support": t + n,
            "predicted": t + p,
        }
    f1s = [row["f1"] for row in per_label.values() if row["f1"] is not None]
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    return {
        "per_label": per_label,
        "macro_f1": sum(f1s) / len(f1s) if f1s else None,
        "micro_f1": _ratio(2 * total_tp, 2 * total_tp + total_fp + total_fn),
    }


def _coverage(tasks, predicted, correct):
    return {
        "tasks": tasks,
        "predicted": predicted,
        "missing_predictions": tasks - predicted,
        "coverage": _ratio(predicted, tasks),
        "accuracy": _ratio(correct, tasks),
        "accuracy_predicted": _ratio(correct, predicted),
    }


def single_choice_metrics(items, *, from_name=None, labels=None):
    """Single-choice classification (Choices, choice="single") for one control.

    `from_name` picks the control (None: every choices item). The true label is the
    ground truth's first choice; a ground truth without a choice for the control is
    not scored (`tasks_without_label`). A prediction without a choice for it counts
    as missing.

    Returns the shared counts (tasks, predicted, missing_predictions, coverage,
    accuracy, accuracy_predicted), `labels`, `per_label` {label: {precision, recall,
    f1, support, predicted}}, `macro_f1`, `micro_f1` (equal to accuracy when every
    task is predicted), `confusion_matrix` {labels, matrix, no_prediction} where
    matrix[i][j] counts tasks of true label i predicted as j and no_prediction[i]
    the tasks of true label i with no prediction.
    """
    pairs, unlabelled = [], 0
    for _, prediction, truth in _rows(items):
        true = _choices(truth, from_name)
        if not true:
            unlabelled += 1
            continue
        predicted = _choices(prediction, from_name) if prediction is not None else None
        pairs.append((true[0], predicted[0] if predicted else None))
    order = _label_order(labels, [label for pair in pairs for label in pair if label is not None])
    index = {label: i for i, label in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    no_prediction = [0] * len(order)
    tp, fp, fn = Counter(), Counter(), Counter()
    for true, predicted in pairs:
        if predicted is None:
            no_prediction[index[true]] += 1
            fn[true] += 1
            continue
        matrix[index[true]][index[predicted]] += 1
        if predicted == true:
            tp[true] += 1
        else:
            fp[predicted] += 1
            fn[true] += 1
    predicted_count = sum(1 for _, p in pairs if p is not None)
    return {
        "type": "choices",
        "multiple": False,
        **_coverage(len(pairs), predicted_count, sum(tp.values())),
        "tasks_without_label": unlabelled,
        "labels": order,
        **_per_label(order, tp, fp, fn),
        "confusion_matrix": {"labels": order, "matrix": matrix, "no_prediction": no_prediction},
    }


def multi_choice_metrics(items, *, from_name=None, labels=None):
    """Multi-label classification (Choices, choice="multiple") for one control.

    The true set is every choice of the ground truth for the control (empty when it
    has none: choosing nothing is an answer). A prediction without an item for the
    control predicts the empty set; a task with no prediction at all is missing and
    all its true labels are false negatives.

    Returns the shared counts, where `accuracy` / `accuracy_predicted` are exact-set
    accuracy (predicted set == true set), plus `labels`, `per_label`, `macro_f1`,
    `micro_f1` as for single choice.
    """
    pairs = []
    for _, prediction, truth in _rows(items):
        true = set(_choices(truth, from_name) or [])
        predicted = None if prediction is None else set(_choices(prediction, from_name) or [])
        pairs.append((true, predicted))
    order = _label_order(labels, [label for true, pred in pairs for label in true | (pred or set())])
    tp, fp, fn = Counter(), Counter(), Counter()
    exact = 0
    for true, predicted in pairs:
        if predicted is None:
            fn.update(true)
            continue
        exact += predicted == true
        tp.update(true & predicted)
        fp.update(predicted - true)
        fn.update(true - predicted)
    return {
        "type": "choices",
        "multiple": True,
        **_coverage(len(pairs), sum(1 for _, p in pairs if p is not None), exact),
        "labels": order,
        **_per_label(order, tp, fp, fn),
    }


def _spans(result, from_name):
    """Set of (start, end, label) spans of the control; a repeated span counts once."""
    spans = set()
    for item in _items_of(result, "labels", from_name):
        value = item.get("value", {})
        start, end = value.get("start"), value.get("end")
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (start, end)):
            raise ValueError(f"span without numeric start/end in {from_name or 'labels'}: {value!r}")
        for label in value.get("labels", []):
            spans.add((start, end, label))
    return spans


def _exact_matches(true, predicted):
    return Counter(span[2] for span in true & predicted)


def _overlap_matches(true, predicted):
    """Count of one-to-one matches between spans of the same label that share at least one
    character, chosen greedily by largest overlap (ties: earliest true span, then earliest
    predicted span), so the result does not depend on input order. Per label."""
    pairs = []
    for t in true:
        for p in predicted:
            overlap = min(t[1], p[1]) - max(t[0], p[0])
            if t[2] == p[2] and overlap > 0:
                pairs.append((-overlap, t, p))
    pairs.sort()
    used_true, used_pred, matched = set(), set(), Counter()
    for _, t, p in pairs:
        if t not in used_true and p not in used_pred:
            used_true.add(t)
            used_pred.add(p)
            matched[t[2]] += 1
    return matched


def span_metrics(items, *, from_name=None, labels=None):
    """Named entities (Labels on Text: start/end character offsets) for one control.

    A span is (start, end, label); an item with several labels gives one span per
    label, and identical spans in one result count once. Ground truth with no spans
    is scored (it says "no entities"), so predicted spans there are false positives.

    - `exact`: a predicted span is right when a true span has the same start, end and label.
    - `overlap`: predicted and true spans of the same label that share at least one
      character are paired one-to-one, greedily by the largest overlap in characters
      (ties: the earlier true span, then the earlier predicted span); a pair is a TP,
      unpaired predicted spans FP, unpaired true spans FN.

    Returns the shared counts (accuracy: tasks whose predicted spans equal the true
    spans exactly), `labels`, `true_spans`, `predicted_spans`, and for each of
    `exact` and `overlap`: {precision, recall, f1 (all overall, micro), macro_f1,
    per_label}.
    """
    order_seen, rows = [], []
    for _, prediction, truth in _rows(items):
        true = _spans(truth, from_name)
        predicted = None if prediction is None else _spans(prediction, from_name)
        rows.append((true, predicted))
        order_seen.extend(s[2] for s in true | (predicted or set()))
    order = _label_order(labels, order_seen)
    result = {"type": "labels", "labels": order}
    exact_tasks = sum(1 for true, predicted in rows if predicted == true)
    result.update(_coverage(len(rows), sum(1 for _, p in rows if p is not None), exact_tasks))
    result["true_spans"] = sum(len(true) for true, _ in rows)
    result["predicted_spans"] = sum(len(p) for _, p in rows if p is not None)
    for mode, matches in (("exact", _exact_matches), ("overlap", _overlap_matches)):
        tp, fp, fn = Counter(), Counter(), Counter()
        for true, predicted in rows:
            predicted = predicted or set()
            matched = matches(true, predicted)
            true_count, pred_count = Counter(s[2] for s in true), Counter(s[2] for s in predicted)
            for label in set(true_count) | set(pred_count):
                tp[label] += matched[label]
                fp[label] += pred_count[label] - matched[label]
                fn[label] += true_count[label] - matched[label]
        figures = _per_label(order, tp, fp, fn)
        total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
        result[mode] = {
            "precision": _ratio(total_tp, total_tp + total_fp),
            "recall": _ratio(total_tp, total_tp + total_fn),
            "f1": figures["micro_f1"],
            "macro_f1": figures["macro_f1"],
            "per_label": figures["per_label"],
        }
    return result


def _number(result, kind, from_name):
    for item in _items_of(result, kind, from_name):
        value = item.get("value", {}).get(kind)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
    return None


def rating_metrics(items, *, from_name=None, kind="rating"):
    """Rating (value.rating) or Number (`kind="number"`, value.number) for one control.

    Ground truth without a value for the control is not scored. Returns the shared
    counts (`accuracy`: predicted value == true value) and `mae`, the mean absolute
    error over the predicted tasks (None when none is predicted).
    """
    pairs = []
    for _, prediction, truth in _rows(items):
        true = _number(truth, kind, from_name)
        if true is not None:
            pairs.append((true, None if prediction is None else _number(prediction, kind, from_name)))
    scored = [(t, p) for t, p in pairs if p is not None]
    errors = [abs(p - t) for t, p in scored]
    return {
        "type": kind,
        **_coverage(len(pairs), len(scored), sum(1 for t, p in scored if p == t)),
        "mae": sum(errors) / len(errors) if errors else None,
    }


def _controls_seen(rows):
    """{from_name: {"type", "multiple"}} inferred from the results: a Choices control is
    multiple when any result picks more than one choice for it."""
    controls = {}
    for _, prediction, truth in rows:
        for item in truth + (prediction or []):
            name, kind = item.get("from_name"), str(item.get("type", "")).lower()
            control = controls.setdefault(name, {"type": kind, "multiple": False})
            if kind == "choices" and len(item.get("value", {}).get("choices", [])) > 1:
                control["multiple"] = True
    return controls


def accuracy_by_control(items, *, controls=None):
    """Figures for every control of a (possibly multi-control) config.

    `items` as for the other functions, with whole results. `controls` is
    {from_name: {"type": "Choices" | "Labels" | "Rating" | "Number" | ..., "labels": [...],
    "multiple": bool}}: Label Studio's parsed_label_config has that shape, but not
    "multiple" (Choices with choice="multiple"). Without `controls`, the controls are
    read off the results. Without "multiple", a Choices control counts as multiple
    when some result picks two choices for it.

    Returns {"tasks": tasks with ground truth, "predicted": those of them with a
    prediction, "missing_predictions", "controls": {from_name: figures}}, the
    figures being those of single_choice_metrics, multi_choice_metrics, span_metrics or
    rating_metrics; a control of another type (TextArea, ...) gets
    {"type": ..., "supported": False}.
    """
    rows = list(_rows(items))
    seen = _controls_seen(rows)
    if controls is None:
        controls = seen
    figures = {}
    for name, control in controls.items():
        kind = str(control.get("type", "")).lower()
        labels = control.get("labels")
        multiple = control.get("multiple", seen.get(name, {}).get("multiple", False))
        if kind == "choices":
            metric = multi_choice_metrics if multiple else single_choice_metrics
            figures[name] = metric(rows, from_name=name, labels=labels)
        elif kind == "labels":
            figures[name] = span_metrics(rows, from_name=name, labels=labels)
        elif kind in ("rating", "number"):
            figures[name] = rating_metrics(rows, from_name=name, kind=kind)
        else:
            figures[name] = {"type": kind, "supported": False}
    predicted = sum(1 for _, prediction, _ in rows if prediction is not None)
    return {
        "tasks": len(rows),
        "predicted": predicted,
        "missing_predictions": len(rows) - predicted,
        "controls": figures,
    }
