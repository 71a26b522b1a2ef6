"""Accuracy of a labeling project's predictions: `GET /v1/labeling/projects/{id}/accuracy`
and the admin's accuracy page (confusion-matrix heatmap, per-label F1 bars, two model
versions side by side, the button that asks another model about the ground truth, and
the predictor comparison's learning curve).

Charts are drawn here as numbers for the templates (cell colours, bar geometry), so the
page needs no JavaScript and nothing from outside the server."""

import math
import re

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.utils.http import urlencode
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from batchsite.errors import ApiError, NotFound
from workers.models import RegisteredModel

from . import comparison as predictor_comparison
from . import evaluation
from .label_config import LabelConfigError
from .models import LabelingProject

MAX_VERSION_CHARS = 300
PROJECT_REFERENCE = re.compile(r"^[0-9]{1,18}(\.[0-9]{1,20})?$")

# API ------------------------------------------------------------------------


class AccuracyQuerySerializer(serializers.Serializer):
    model_version = serializers.CharField(
        required=False,
        max_length=MAX_VERSION_CHARS,
        help_text="The model version to score; default: the project's current one.",
    )
    compare = serializers.CharField(
        required=False,
        max_length=MAX_VERSION_CHARS,
        help_text="A second model version, compared with the first on the tasks both predicted.",
    )


class ModelVersionSerializer(serializers.Serializer):
    model_version = serializers.CharField()
    predictions = serializers.IntegerField(help_text="Tasks with a prediction of this version.")


class ComparisonSerializer(serializers.Serializer):
    model_versions = serializers.ListField(child=serializers.CharField(), help_text="[model_version, compare].")
    tasks = serializers.IntegerField(help_text="Ground-truth tasks both versions predicted: the ones compared.")
    only_a = serializers.IntegerField(help_text="Ground-truth tasks only the first version predicted (left out).")
    only_b = serializers.IntegerField(help_text="Ground-truth tasks only the second version predicted (left out).")
    controls = serializers.JSONField(
        help_text="{control: {a: figures, b: figures, outcomes: {both_correct, only_a_correct, only_b_correct, "
        "both_wrong}}}, figures as in `controls`, on the compared tasks only."
    )


class AccuracySerializer(serializers.Serializer):
    object = serializers.CharField(help_text="Always 'labeling.accuracy'.")
    project = serializers.IntegerField(help_text="The Label Studio project id.")
    project_key = serializers.CharField(help_text='Label Studio\'s project key "<id>.<created_at>".')
    model_version = serializers.CharField()
    ground_truth_revision = serializers.IntegerField(help_text="Goes up on every ground-truth change.")
    tasks = serializers.IntegerField(help_text="Tasks with ground truth.")
    predicted = serializers.IntegerField(help_text="Of them, tasks with a prediction of this version.")
    missing_predictions = serializers.IntegerField(help_text="Tasks with ground truth and no prediction.")
    coverage = serializers.FloatField(allow_null=True, help_text="predicted / tasks; null without ground truth.")
    predictions_without_ground_truth = serializers.IntegerField(help_text="Predicted tasks that have no ground truth.")
    controls = serializers.JSONField(
        help_text="{control name: figures}. Every control: tasks, predicted, missing_predictions, coverage, "
        "accuracy (a task without prediction counts as wrong), accuracy_predicted. Choices: labels, per_label "
        "{label: {precision, recall, f1, support, predicted}}, macro_f1, micro_f1, and for single choice "
        "confusion_matrix {labels, matrix (rows true, columns predicted), no_prediction}; multiple choice: "
        "accuracy is exact-set. Labels (NER): exact and overlap {precision, recall, f1, macro_f1, per_label}. "
        "Rating / Number: mae. Others: {type, supported: false}. Undefined figures (0/0) are null."
    )
    model_versions = ModelVersionSerializer(many=True, help_text="Versions with predictions in the project.")
    comparison = ComparisonSerializer(allow_null=True, help_text="With `compare`: the two versions side by side.")


def project_for(reference):
    """The project of a Label Studio project id (or its key "<id>.<created_at>")."""
    reference = str(reference)
    if not PROJECT_REFERENCE.match(reference):
        raise NotFound(f"No labeling project for Label Studio project {reference!r}.", param="project_id")
    if "." in reference:
        project = LabelingProject.objects.filter(ls_project=reference).first()
        matches = [project] if project else []
    else:
        matches = list(LabelingProject.objects.filter(ls_project_id=int(reference))[:2])
    if not matches:
        raise NotFound(f"No labeling project for Label Studio project {reference}.", param="project_id")
    if len(matches) > 1:
        raise ApiError(
            f"Several Label Studio instances have a project {reference}; name it by its key '<id>.<created_at>'.",
            code="ambiguous_project",
            param="project_id",
        )
    return matches[0]


def _check_version(project, version, param, known):
    if version != project.model_version and version not in known:
        listed = ", ".join(sorted(known)[:10]) or "none"
        raise ApiError(
            f"Project {project.ls_project_id} has no predictions of model version {version!r} "
            f"(versions with predictions: {listed}).",
            code="unknown_model_version",
            param=param,
        )


def comparison_payload(comparison):
    return {
        "model_versions": comparison["model_versions"],
        "tasks": comparison["tasks"],
        "only_a": comparison["only_a"],
        "only_b": comparison["only_b"],
        "controls": {
            name: {
                "a": figures,
                "b": comparison["b"]["controls"][name],
                "outcomes": comparison["outcomes"].get(name),
            }
            for name, figures in comparison["a"]["controls"].items()
        },
    }


def accuracy_payload(project, model_version=None, compare=None):
    """The API's answer (also what the admin page shows); ApiError for bad parameters."""
    versions = evaluation.model_versions(project)
    known = {v["model_version"] for v in versions}
    model_version = model_version or project.model_version
    _check_version(project, model_version, "model_version", known)
    if compare is not None:
        if compare == model_version:
            raise ApiError("compare must name another model version.", code="invalid_value", param="compare")
        _check_version(project, compare, "compare", known)
    figures = evaluation.project_accuracy(project, model_version)
    payload = {
        "object": "labeling.accuracy",
        "project": project.ls_project_id,
        "project_key": project.ls_project,
        **figures,
        "model_versions": versions,
        "comparison": None,
    }
    if compare is not None:
        payload["comparison"] = comparison_payload(evaluation.project_comparison(project, model_version, compare))
    return payload


class AccuracyView(APIView):
    @extend_schema(
        operation_id="labeling_project_accuracy",
        summary="Accuracy of a Label Studio project's predictions against its ground truth",
        parameters=[
            OpenApiParameter(
                "project_id",
                str,
                OpenApiParameter.PATH,
                description='The Label Studio project id, or its key "<id>.<created_at>".',
            ),
            AccuracyQuerySerializer,
        ],
        responses=AccuracySerializer,
    )
    def get(self, request, project_id):
        query = AccuracyQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        project = project_for(project_id)
        return Response(
            accuracy_payload(project, query.validated_data.get("model_version"), query.validated_data.get("compare"))
        )


# Admin page: figures made drawable -------------------------------------------------

PERCENT_KEYS = ("accuracy", "accuracy_predicted", "coverage")
BAR_ROW = 24
BAR_LABEL_WIDTH = 150
BAR_WIDTH = 240
BAR_VALUE_WIDTH = 56


def fmt(value, kind="ratio"):
    if value is None:
        return "–"
    if kind == "percent":
        return f"{value * 100:.1f} %"
    if kind == "count":
        return str(value)
    return f"{value:.3f}"


def score_colour(value):
    """Red (0) through amber to green (1), for bars and deltas."""
    if value is None:
        return "#c8c8c8"
    return f"hsl({round(value * 120)}, 60%, 45%)"


def heatmap(matrix):
    """Rows of cells for the confusion matrix: counts, share of the true label's
    tasks, and a colour (green on the diagonal, red off it, grey for no prediction)."""
    labels, rows = matrix["labels"], []
    for i, label in enumerate(labels):
        counts = [*matrix["matrix"][i], matrix["no_prediction"][i]]
        total = sum(counts)
        cells = []
        for j, count in enumerate(counts):
            share = count / total if total else 0.0
            hue, saturation = (140, 55) if j == i else (0, 0) if j == len(labels) else (4, 75)
            lightness = round(97 - share * 57)
            predicted = labels[j] if j < len(labels) else "no prediction"
            cells.append(
                {
                    "count": count,
                    "share": share,
                    "background": f"hsl({hue}, {saturation}%, {lightness}%)",
                    "colour": "#fff" if lightness < 62 else "#1b1b1b",
                    "title": f"true {label}, predicted {predicted}: {count} of {total} ({share * 100:.0f} %)",
                    "diagonal": j == i,
                }
            )
        rows.append({"label": label, "cells": cells, "total": total})
    return {"labels": labels, "rows": rows}


def bar_chart(rows, series):
    """Horizontal bars, one group per row: rows [(label, [value per series])], series
    [(name, colour or None for a red-to-green colour by value)], values in [0, 1] or None."""
    per_group = len(series)
    group_height = BAR_ROW * per_group + 8
    groups = []
    for g, (label, values) in enumerate(rows):
        top = g * group_height
        bars = []
        for s, ((name, colour), value) in enumerate(zip(series, values, strict=True)):
            y = top + s * BAR_ROW + 4
            bars.append(
                {
                    "y": y,
                    "text_y": y + BAR_ROW / 2 + 1,
                    "height": BAR_ROW - 6,
                    "width": round((value or 0) * BAR_WIDTH, 1),
                    "fill": colour or score_colour(value),
                    "value": fmt(value),
                    "value_x": BAR_LABEL_WIDTH + BAR_WIDTH + 6,
                    "series": name,
                }
            )
        groups.append({"label": label, "label_y": top + group_height / 2 + 1, "bars": bars})
    return {
        "groups": groups,
        "series": [{"name": name, "colour": colour or score_colour(0.8)} for name, colour in series],
        "height": max(group_height * len(rows), BAR_ROW),
        "width": BAR_LABEL_WIDTH + BAR_WIDTH + BAR_VALUE_WIDTH,
        "label_x": BAR_LABEL_WIDTH - 8,
        "bar_x": BAR_LABEL_WIDTH,
        "grid": [
            {"x": BAR_LABEL_WIDTH + round(t * BAR_WIDTH, 1), "label": f"{t:.2g}"} for t in (0, 0.25, 0.5, 0.75, 1)
        ],
    }


def _label_rows(per_label):
    return [
        {
            "label": label,
            "precision": fmt(row["precision"]),
            "recall": fmt(row["recall"]),
            "f1": fmt(row["f1"]),
            "support": row["support"],
            "predicted": row["predicted"],
        }
        for label, row in per_label.items()
    ]


def control_view(name, figures, control=None):
    """What the page shows for one control."""
    kind = figures.get("type", "")
    view = {"name": name, "tag": control.tag if control else kind, "type": kind, "figures": figures}
    if figures.get("supported") is False:
        view["kind"] = "unsupported"
        return view
    view["headline"] = [
        (
            "Accuracy" if kind != "choices" or not figures.get("multiple") else "Exact-set accuracy",
            fmt(figures["accuracy"], "percent"),
            "over every task with ground truth; no prediction counts as wrong",
        ),
        ("Accuracy on predicted", fmt(figures["accuracy_predicted"], "percent"), "over the predicted tasks only"),
        ("Coverage", fmt(figures["coverage"], "percent"), f"{figures['predicted']} of {figures['tasks']} tasks"),
    ]
    if kind == "choices":
        view["kind"] = "multiple" if figures["multiple"] else "single"
        view["headline"] += [("Macro F1", fmt(figures["macro_f1"]), ""), ("Micro F1", fmt(figures["micro_f1"]), "")]
        view["labels"] = _label_rows(figures["per_label"])
        view["bars"] = bar_chart([(k, [v["f1"]]) for k, v in figures["per_label"].items()], [("F1", None)])
        if not figures["multiple"]:
            view["heatmap"] = heatmap(figures["confusion_matrix"])
    elif kind == "labels":
        view["kind"] = "spans"
        view["headline"][0] = (
            "Exact tasks",
            view["headline"][0][1],
            "tasks whose predicted spans are all exactly right",
        )
        for mode in ("exact", "overlap"):
            m = figures[mode]
            view["headline"].append(
                (
                    f"{mode.title()} P / R / F1",
                    f"{fmt(m['precision'])} / {fmt(m['recall'])} / {fmt(m['f1'])}",
                    f"macro F1 {fmt(m['macro_f1'])}",
                )
            )
        view["spans"] = [
            {
                "label": label,
                "exact": {
                    k: fmt(v)
                    for k, v in figures["exact"]["per_label"][label].items()
                    if k in ("precision", "recall", "f1")
                },
                "overlap": {
                    k: fmt(v)
                    for k, v in figures["overlap"]["per_label"][label].items()
                    if k in ("precision", "recall", "f1")
                },
                "support": figures["exact"]["per_label"][label]["support"],
            }
            for label in figures["labels"]
        ]
        view["bars"] = bar_chart(
            [
                (label, [figures["exact"]["per_label"][label]["f1"], figures["overlap"]["per_label"][label]["f1"]])
                for label in figures["labels"]
            ],
            [("exact F1", "#417690"), ("overlap F1", "#79aec8")],
        )
    else:
        view["kind"] = "number"
        view["headline"].append(("MAE", fmt(figures["mae"]), "mean absolute error over the predicted tasks"))
    return view


COMPARED = (
    ("accuracy", "Accuracy", "percent"),
    ("macro_f1", "Macro F1", "ratio"),
    ("micro_f1", "Micro F1", "ratio"),
    ("mae", "MAE (lower is better)", "ratio"),
)


def comparison_view(comparison):
    controls = []
    for name, pair in comparison["controls"].items():
        a, b = pair["a"], pair["b"]
        if a.get("supported") is False:
            continue
        rows = []
        metrics = list(COMPARED)
        if a["type"] == "labels":
            metrics = [("accuracy", "Exact tasks", "percent")]
            for mode in ("exact", "overlap"):
                metrics.append((f"{mode}.f1", f"{mode.title()} F1", "ratio"))
        for key, title, kind in metrics:
            va, vb = _dig(a, key), _dig(b, key)
            if va is None and vb is None and key not in a and "." not in key:
                continue
            delta = None if va is None or vb is None else vb - va
            better = None if delta is None or delta == 0 else (delta < 0) if key == "mae" else (delta > 0)
            rows.append(
                {
                    "title": title,
                    "a": fmt(va, kind),
                    "b": fmt(vb, kind),
                    "delta": "–"
                    if delta is None
                    else f"{delta * (100 if kind == 'percent' else 1):+.{1 if kind == 'percent' else 3}f}",
                    "better": better,
                }
            )
        view = {"name": name, "rows": rows, "outcomes": pair["outcomes"]}
        outcomes = pair["outcomes"] or {}
        total = sum(outcomes.values())
        view["outcome_bar"] = [
            {
                "key": key,
                "count": outcomes.get(key, 0),
                "share": round(outcomes.get(key, 0) / total * 100, 2) if total else 0,
            }
            for key in ("both_correct", "only_a_correct", "only_b_correct", "both_wrong")
        ]
        per_label = a.get("per_label") or (a.get("exact") or {}).get("per_label")
        if per_label:
            b_labels = b.get("per_label") or (b.get("exact") or {}).get("per_label") or {}
            view["bars"] = bar_chart(
                [(label, [row["f1"], (b_labels.get(label) or {}).get("f1")]) for label, row in per_label.items()],
                [("A", "#417690"), ("B", "#e0a030")],
            )
        controls.append(view)
    return controls


def _dig(figures, key):
    for part in key.split("."):
        if not isinstance(figures, dict):
            return None
        figures = figures.get(part)
    return figures


def page_url(project, **query):
    url = reverse("admin:labeling_labelingproject_accuracy", args=[project.pk])
    query = {k: v for k, v in query.items() if v}
    return f"{url}?{urlencode(query)}" if query else url


def _start_ground_truth_run(request, project):
    model = RegisteredModel.objects.filter(pk=request.POST.get("model")).first()
    if model is None:
        messages.error(request, "Choose a registered model.")
        return HttpResponseRedirect(page_url(project))
    try:
        batch, version, asked = evaluation.ground_truth_predict_start(project=project, model=model, owner=request.user)
    except (evaluation.EvaluationError, ApiError) as exc:
        messages.error(request, str(exc))
        return HttpResponseRedirect(page_url(project))
    if batch is None:
        messages.info(request, f"Every ground-truth task already has a prediction of {version} (or lacks its text).")
    else:
        messages.success(
            request,
            f"Batch {batch.id}: {asked} ground-truth tasks for {model.name} ({version}). Its predictions are "
            "stored here when it completes; reload this page to compare.",
        )
    chosen = request.POST.get("model_version") or project.model_version
    return HttpResponseRedirect(page_url(project, model_version=chosen, compare=version if version != chosen else None))


# Predictor comparison (zero-shot, few-shot, embedding): learning curve ----------------

METHOD_STYLES = {
    "zero_shot": ("Zero-shot LLM", "#8a8a8a", "6 4"),
    "few_shot": ("Few-shot LLM", "#417690", ""),
    "embedding": ("Embedding predictor", "#e0a030", ""),
}
CURVE_LEFT, CURVE_TOP, CURVE_WIDTH, CURVE_HEIGHT = 48, 12, 420, 220


def learning_curve_chart(report):
    """An SVG line chart of accuracy (y, 0 to 1) against the number of ground-truth
    examples (x, log scale); zero-shot learns nothing, so it is a flat line."""
    sizes = [p["size"] for p in report["curve"]]
    low, high = (math.log(min(sizes)), math.log(max(sizes))) if sizes else (0.0, 0.0)

    def x(size):
        if high == low:
            return CURVE_LEFT + CURVE_WIDTH / 2
        return round(CURVE_LEFT + (math.log(size) - low) / (high - low) * CURVE_WIDTH, 1)

    def y(value):
        return round(CURVE_TOP + (1 - value) * CURVE_HEIGHT, 1)

    lines = []
    for method in report["methods"]:
        name, colour, dash = METHOD_STYLES[method]
        if method == "zero_shot":
            value = (report["zero_shot"] or {}).get("accuracy")
            if value is None:
                continue
            title = f"{name}: {fmt(value, 'percent')} at every size"
            points = f"{CURVE_LEFT},{y(value)} {CURVE_LEFT + CURVE_WIDTH},{y(value)}"
            lines.append(
                {
                    "method": method,
                    "name": name,
                    "colour": colour,
                    "dash": dash,
                    "title": title,
                    "dots": [],
                    "points": points,
                }
            )
            continue
        dots = [
            {"x": x(p["size"]), "y": y(v), "title": f"{name}, {p['size']} examples: {fmt(v, 'percent')}"}
            for p in report["curve"]
            if (v := (p.get(method) or {}).get("accuracy")) is not None
        ]
        lines.append(
            {
                "method": method,
                "name": name,
                "colour": colour,
                "dash": dash,
                "title": name,
                "dots": dots,
                "points": " ".join(f"{d['x']},{d['y']}" for d in dots),
            }
        )
    bottom = CURVE_TOP + CURVE_HEIGHT
    return {
        "width": CURVE_LEFT + CURVE_WIDTH + 24,
        "height": bottom + 40,
        "left": CURVE_LEFT,
        "right": CURVE_LEFT + CURVE_WIDTH,
        "bottom": bottom,
        "axis_label_x": CURVE_LEFT + CURVE_WIDTH / 2,
        "axis_label_y": bottom + 34,
        "y_grid": [{"y": y(t), "text_y": y(t) + 4, "label": f"{t * 100:.0f} %"} for t in (0, 0.25, 0.5, 0.75, 1)],
        "x_ticks": [{"x": x(size), "label": size} for size in sizes],
        "lines": lines,
    }


def predictor_comparison_view(state):
    """What the page shows of LabelingProject.predictor_comparison: the status, an
    error, and the latest report as a table and a learning-curve chart."""
    if not state:
        return None
    view = {
        "status": state.get("status"),
        "error": state.get("error"),
        "queued_by": state.get("queued_by"),
        "queued_at": parse_datetime(state["queued_at"]) if state.get("queued_at") else None,
        "started_at": parse_datetime(state["started_at"]) if state.get("started_at") else None,
        "finished_at": parse_datetime(state["finished_at"]) if state.get("finished_at") else None,
        "notes": [
            {"name": METHOD_STYLES[method][0], "why": why}
            for method, why in (state.get("notes") or {}).items()
            if method in METHOD_STYLES
        ],
        "report": None,
    }
    report = state.get("report")
    if report:
        methods = [m for m in report["methods"] if m in METHOD_STYLES]
        zero = (report["zero_shot"] or {}).get("accuracy")
        view["report"] = report
        view["columns"] = [METHOD_STYLES[m][0] for m in methods]
        view["rows"] = [
            {
                "size": point["size"],
                "cells": [
                    fmt(zero if m == "zero_shot" else (point.get(m) or {}).get("accuracy"), "percent") for m in methods
                ],
            }
            for point in report["curve"]
        ]
        view["chart"] = learning_curve_chart({**report, "methods": methods})
    return view


def _queue_predictor_comparison(request, project):
    predictor_comparison.queue_comparison(project, owner=request.user)
    messages.success(
        request, "Predictor comparison queued; it runs in the task queue. Reload this page to see its result."
    )
    return HttpResponseRedirect(page_url(project) + "#acc-predictors")


def accuracy_page(request, model_admin, object_id):
    """The admin page (wrapped by admin_view, so staff only); viewing needs the view
    permission on labeling projects, starting a run the change permission."""
    project = get_object_or_404(LabelingProject.objects.select_related("model"), pk=object_id)
    if not model_admin.has_view_permission(request, project):
        raise PermissionDenied
    may_run = model_admin.has_change_permission(request, project)
    if request.method == "POST":
        if not may_run:
            raise PermissionDenied
        if request.POST.get("action") == "compare-predictors":
            return _queue_predictor_comparison(request, project)
        return _start_ground_truth_run(request, project)

    versions = evaluation.model_versions(project)
    known = {v["model_version"] for v in versions}
    chosen = request.GET.get("model_version") or project.model_version
    other = request.GET.get("compare") or ""
    error = None
    try:
        payload = accuracy_payload(project, chosen, other or None)
    except ApiError as exc:
        error = exc.message
        chosen, other = project.model_version, ""
        payload = accuracy_payload(project, chosen)
    try:
        config = project.parsed_config()
        config_controls = {c.name: c for c in config.controls}
    except LabelConfigError:
        config_controls = {}
    controls = [control_view(n, f, config_controls.get(n)) for n, f in payload["controls"].items()]
    models = RegisteredModel.objects.filter(is_active=True, runner=RegisteredModel.Runner.GENERATE).order_by("name")
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "original": project,
        "title": f"Accuracy: {project}",
        "project": project,
        "payload": payload,
        "controls": controls,
        "versions": versions,
        "chosen": chosen,
        "compare": other,
        "current_has_predictions": project.model_version in known,
        "comparison": comparison_view(payload["comparison"]) if payload["comparison"] else None,
        "error": error,
        "may_run": may_run,
        "models": [{"model": m, "version": evaluation.version_for(project, m)} for m in models],
        "runs": evaluation.ground_truth_batches(project),
        "page_url": page_url(project),
        "predictors": predictor_comparison_view(project.predictor_comparison),
    }
    return TemplateResponse(request, "admin/labeling/accuracy.html", context)
