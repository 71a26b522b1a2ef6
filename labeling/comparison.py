"""Zero-shot LLM, few-shot LLM and the embedding predictor compared on the same
held-out ground truth, and how each grows with the number of ground-truth
annotations (a learning curve).

A seeded shuffle of the project's ground truth gives the held-out tasks and a pool;
for each size, a seeded draw of that many pool examples is what the few-shot
prompts and the embedding predictor learn from. Held-out tasks are never in the
pool, so no task is ever its own example. Figures come from labeling/accuracy.py.
"""

import logging
import time

import numpy as np
from django.utils import timezone

from batchsite.errors import ApiError
from workers import inference

from . import examples as E
from . import predictions as P
from .accuracy import accuracy_by_control
from .fewshot import nearest_examples
from .label_config import LabelConfigError
from .learners import BlendVote
from .models import LabelingProject

logger = logging.getLogger(__name__)

METHODS = ("zero_shot", "few_shot", "embedding")
DEFAULT_SIZES = (20, 50, 100, 200, 500)
DEFAULT_K = 4
CHAT_TIMEOUT = 600.0
PAGE_SIZES = (5, 10, 20, 50, 100, 200, 500, 1000)
COMPARE_TASK = "labeling.comparison.compare_task"


class ComparisonError(ApiError):
    pass


def _controls(config):
    return {c.name: {"type": c.type, "labels": list(c.labels), "multiple": c.multiple} for c in config.controls}


def figures(config, held_out, results):
    """accuracy_by_control of `results` (a result list or None per held-out example)
    and the headline `accuracy`: the mean over controls that have one."""
    items = [(e.task_id, r, e.result) for e, r in zip(held_out, results, strict=True)]
    by_control = accuracy_by_control(items, controls=_controls(config))
    scores = [f["accuracy"] for f in by_control["controls"].values() if f.get("accuracy") is not None]
    return {"accuracy": sum(scores) / len(scores) if scores else None, **by_control}


def _task(example):
    return {"id": example.task_id, "data": example.data}


def _llm_results(project, config, held_out, examples=None):
    tasks = [_task(e) for e in held_out]
    requests = P.build_requests(project, tasks, config, examples)
    asked = [r for r in requests if r is not None]
    answers = iter(inference.chat(asked, model=project.model.name, timeout=CHAT_TIMEOUT))
    chat = [None if r is None else next(answers) for r in requests]
    generations = [
        None if r is None else (r.text, r.token_logprobs, (r.error or {}).get("message") if r.error else None)
        for r in chat
    ]
    return [p.result or None for p in P.results_from(project, tasks, generations, config)]


def _few_shot_results(project, config, held_out, drawn, vectors, k):
    index = E.Index(drawn, np.vstack([vectors[e.text] for e in drawn]), complete=True)
    picks = nearest_examples(index, [vectors[e.text] for e in held_out], [e.task_id for e in held_out], k)
    examples = [[(drawn[j].data, drawn[j].answer) for j in reversed(p)] for p in picks]
    return _llm_results(project, config, held_out, examples)


def _embedding_results(config, held_out, drawn, vectors):
    control = config.controls[0]
    model = BlendVote().fit([vectors[e.text] for e in drawn], [e.answer for e in drawn])
    answers = model.predict([vectors[e.text] for e in held_out])
    return [
        [{"from_name": control.name, "to_name": control.to_name, "type": "choices", "value": {"choices": [label]}}]
        for label, _ in answers
    ]


def learning_curve(project, sizes=DEFAULT_SIZES, *, held_out=None, seed=0, methods=METHODS, k=None):
    """The comparison as a JSON-able dict. `held_out`: how many ground-truth tasks
    are scored (default a quarter, at most 200); `k`: few-shot examples per task
    (default the project's few_shot_k, else 4). Sizes larger than the pool are
    listed in `skipped_sizes`. Raises ComparisonError (400) for what cannot be
    compared, and the inference errors when a worker is missing."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ComparisonError(f"Unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}.")
    config = project.parsed_config()
    if "embedding" in methods and not P.uses_guided_choice(config):
        raise ComparisonError(
            "The embedding predictor needs one single-choice Choices control; leave it out of the methods."
        )
    if any(m != "embedding" for m in methods) and (project.model is None or not project.model.is_active):
        raise ComparisonError("The project has no active model for the LLM methods.")
    examples = E.ground_truth_examples(project, config)
    if held_out is None:
        held_out = min(200, len(examples) // 4)
    if held_out < 1 or len(examples) - held_out < 1:
        raise ComparisonError(
            f"The project has {len(examples)} ground-truth examples: "
            f"too few to hold {held_out} out and learn from the rest."
        )
    order = np.random.default_rng(seed).permutation(len(examples))
    test = [examples[i] for i in order[:held_out]]
    pool = [examples[i] for i in order[held_out:]]
    sizes = sorted(set(int(s) for s in sizes))
    usable = [s for s in sizes if 1 <= s <= len(pool)]
    k = k or project.few_shot_k or DEFAULT_K
    seconds = {}
    vectors = {}
    if {"few_shot", "embedding"} & set(methods):
        started = time.monotonic()
        vectors = E.vectors_for(project.embedding_model_name(), [e.text for e in examples], timeout=CHAT_TIMEOUT)
        seconds["embed"] = round(time.monotonic() - started, 2)
    report = {
        "project": project.ls_project,
        "model": project.model.name if project.model else None,
        "embedding_model": project.embedding_model_name(),
        "ground_truth": len(examples),
        "held_out": len(test),
        "pool": len(pool),
        "seed": seed,
        "k": k,
        "methods": list(methods),
        "skipped_sizes": [s for s in sizes if s not in usable],
        "zero_shot": None,
        "curve": [],
    }
    if "zero_shot" in methods:
        started = time.monotonic()
        report["zero_shot"] = figures(config, test, _llm_results(project, config, test))
        seconds["zero_shot"] = round(time.monotonic() - started, 2)
    for size in usable:
        drawn_at = np.random.default_rng([seed, size]).choice(len(pool), size=size, replace=False)
        drawn = [pool[i] for i in sorted(drawn_at)]
        point = {"size": size}
        if "few_shot" in methods:
            started = time.monotonic()
            point["few_shot"] = figures(config, test, _few_shot_results(project, config, test, drawn, vectors, k))
            seconds[f"few_shot@{size}"] = round(time.monotonic() - started, 2)
        if "embedding" in methods:
            point["embedding"] = figures(config, test, _embedding_results(config, test, drawn, vectors))
        report["curve"].append(point)
    report["seconds"] = seconds
    return report


def summary_rows(report):
    """(size, zero-shot, few-shot, embedding) headline accuracies, None where not measured."""
    zero = (report["zero_shot"] or {}).get("accuracy")
    return [
        (p["size"], zero, (p.get("few_shot") or {}).get("accuracy"), (p.get("embedding") or {}).get("accuracy"))
        for p in report["curve"]
    ]


# The accuracy page's comparison: queued from the page, run in a django-q task, kept
# in LabelingProject.predictor_comparison (the cache is per process).


def applicable_methods(project, config):
    """(methods, {method: why it is left out}) for this project."""
    methods, notes = [], {}
    if project.model is None or not project.model.is_active:
        why = "the project has no active LLM model"
        notes["zero_shot"] = notes["few_shot"] = why
    else:
        methods += ["zero_shot", "few_shot"]
    if P.uses_guided_choice(config):
        methods.append("embedding")
    else:
        notes["embedding"] = "the embedding predictor needs one single-choice Choices control"
    return methods, notes


def fitting_sizes(ground_truth, held_out=None):
    """The sizes of PAGE_SIZES the pool left after holding out (as learning_curve
    does) can give; the whole pool when it is smaller than all of them."""
    held_out = min(200, ground_truth // 4) if held_out is None else held_out
    pool = ground_truth - held_out
    sizes = [s for s in PAGE_SIZES if s <= pool]
    return sizes or ([pool] if pool >= 1 else [])


def _store(project_id, **state):
    LabelingProject.objects.filter(pk=project_id).update(predictor_comparison=state)


def queue_comparison(project, *, owner=None):
    """Marks the comparison queued (the previous report stays shown) and queues it."""
    from django_q.tasks import async_task

    previous = project.predictor_comparison or {}
    state = {
        "status": "queued",
        "queued_at": timezone.now().isoformat(),
        "queued_by": owner.get_username() if owner is not None else None,
        "report": previous.get("report"),
        "finished_at": previous.get("finished_at"),
        "notes": previous.get("notes") or {},
    }
    _store(project.pk, **state)
    project.predictor_comparison = state
    async_task(COMPARE_TASK, project.pk, {}, task_name=f"labelstudio predictor comparison {project.pk}")
    return state


def compare_task(project_id, options=None):
    """The django-q task: learning_curve with the methods and sizes that fit the
    project (or those in `options`), stored with its time; an error is stored too."""
    options = options or {}
    project = LabelingProject.objects.select_related("model", "embedding_model").filter(pk=project_id).first()
    if project is None:
        return None
    previous = project.predictor_comparison or {}
    state = {
        "queued_at": previous.get("queued_at"),
        "queued_by": previous.get("queued_by"),
        "started_at": timezone.now().isoformat(),
        "report": previous.get("report"),
        "finished_at": previous.get("finished_at"),
        "notes": previous.get("notes") or {},
    }
    _store(project_id, status="running", **state)
    try:
        config = project.parsed_config()
        methods, notes = applicable_methods(project, config)
        methods = options.get("methods") or methods
        if not methods:
            raise ComparisonError("No predictor applies to this project: " + "; ".join(sorted(set(notes.values()))))
        held_out = options.get("held_out")
        sizes = options.get("sizes") or fitting_sizes(len(E.ground_truth_examples(project, config)), held_out)
        report = learning_curve(
            project, sizes, held_out=held_out, seed=options.get("seed", 0), methods=methods, k=options.get("k")
        )
    except (ApiError, LabelConfigError) as exc:
        _store(project_id, status="failed", error=getattr(exc, "message", str(exc)), **state)
        return None
    except Exception as exc:
        logger.exception("predictor comparison of project %s failed", project_id)
        _store(project_id, status="failed", error=f"{type(exc).__name__}: {exc}", **state)
        return None
    state.update(report=report, finished_at=timezone.now().isoformat(), notes=notes)
    _store(project_id, status="done", **state)
    return report
