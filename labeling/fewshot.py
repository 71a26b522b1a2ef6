"""Few-shot prompts: the k ground-truth examples most similar to a task (by the
embedding model's vectors) go before it in the conversation, as a user turn with
the example's prompt and an assistant turn with its answer in the guided format.

A task is never its own example. When the examples cannot be had (no embedding
worker, a timeout), /predict goes on zero-shot and the log says why.
"""

import logging

from batchsite.errors import ApiError

from . import examples as E
from .learners import nearest
from .prompts import build_prompt

logger = logging.getLogger(__name__)

# Bound on the examples' text per task (prompts and answers, in characters): the
# least similar examples are left out beyond it, so the prompt fits the model.
MAX_EXAMPLE_CHARS = 6000


def nearest_examples(index, query_vectors, query_task_ids, k):
    """For each query, the indexes (into index.examples) of its k most similar
    examples, most similar first, leaving out the example of the query's own task."""
    if index.matrix is None or k < 1 or not len(query_vectors):
        return [[] for _ in query_vectors]
    # One extra neighbour: the task itself may be among the examples (once, one per task).
    neighbours = nearest(index.matrix, query_vectors, k + 1)
    return [
        [i for i, _ in row if task_id is None or index.examples[i].task_id != task_id][:k]
        for row, task_id in zip(neighbours, query_task_ids, strict=True)
    ]


def _within_budget(chosen, config, templates, budget=MAX_EXAMPLE_CHARS):
    kept, used = [], 0
    for example in chosen:  # most similar first
        size = len(build_prompt(config, templates, example.data)) + len(example.answer)
        if used + size > budget:
            break
        kept.append(example)
        used += size
    return kept


def prompt_examples(project, config, tasks, *, timeout=None):
    """For each task, its few-shot (data, answer text) pairs in prompt order (the
    most similar last, next to the task), or None for zero-shot: few-shot off, no
    ground truth, or no vectors (the reason is logged)."""
    k = project.few_shot_k
    if not k or not tasks:
        return None
    texts = [E.task_text(config, t.get("data")) if isinstance(t.get("data"), dict) else None for t in tasks]
    try:
        index, vectors = E.index_and_queries(project, config, texts, timeout=timeout)
    except ApiError as exc:
        logger.warning(
            "Label Studio project %s: few-shot examples unavailable, predicting zero-shot: %s (%s)",
            project.ls_project,
            exc.message,
            exc.code,
        )
        return None
    if index.matrix is None:
        return None
    asked = [i for i, text in enumerate(texts) if text in vectors]
    try:
        chosen = nearest_examples(index, [vectors[texts[i]] for i in asked], [_task_id(tasks[i]) for i in asked], k)
    except ValueError as exc:  # vectors of another size: the embedding model was changed under the same name
        logger.warning("Label Studio project %s: few-shot examples unusable, zero-shot: %s", project.ls_project, exc)
        return None
    templates = project.templates()
    per_task = [()] * len(tasks)
    for i, picks in zip(asked, chosen, strict=True):
        kept = _within_budget([index.examples[j] for j in picks], config, templates)
        per_task[i] = [(e.data, e.answer) for e in reversed(kept)]
    if len(asked) < len(tasks):
        logger.info(
            "Label Studio project %s: %d of %d tasks without a vector, predicted zero-shot",
            project.ls_project,
            len(tasks) - len(asked),
            len(tasks),
        )
    return per_task


def _task_id(task):
    task_id = task.get("id")
    return task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else None
