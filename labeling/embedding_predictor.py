"""The embedding predictor: no LLM, for a config with one single-choice Choices
control. BlendVote (labeling/learners.py) fitted on the project's ground truth
predicts each task's label from its text's vector; the score is the label's
probability. Fitted models are kept in process memory per (project, ground-truth
revision, embedding model, config), so a new ground-truth annotation (which
raises the revision) makes the next /predict refit.

Labels come from the ground truth, whose answers are the config's choices, so
every prediction is valid for the config.
"""

import logging

from batchsite.errors import ApiError

from . import examples as E
from .learners import BlendVote
from .predictions import TaskPrediction, uses_guided_choice

logger = logging.getLogger(__name__)

NO_GROUND_TRUTH = "the project has no ground truth with a vector yet: the embedding predictor has nothing to learn from"


class PredictorNotSupported(ApiError):
    status_code = 400


def check_config(config):
    if not uses_guided_choice(config):
        raise PredictorNotSupported(
            "The embedding predictor needs a config with one single-choice Choices control (and nothing else "
            "to predict); choose the LLM predictor for this project in the vllm-batch admin.",
            code="predictor_not_supported",
        )


def fitted(project, index):
    """BlendVote fitted on the index's examples, from the cache when the same
    examples were fitted before in this process."""
    key = (
        "blend",
        project.pk,
        project.ground_truth_revision,
        project.embedding_model_name(),
        E.text_key(project.label_config),
        len(index.examples),
    )
    model = E.cached(key)
    if model is None:
        model = BlendVote().fit(index.matrix, [e.answer for e in index.examples])
        E.remember(key, model)
        logger.info(
            "Label Studio project %s: embedding predictor fitted on %d examples (revision %s)",
            project.ls_project,
            len(index.examples),
            project.ground_truth_revision,
        )
    return model


def predict(project, config, tasks, *, timeout=None):
    """A TaskPrediction per task, in order. Raises ApiError: 400 for a config it
    cannot predict, the inference errors (503 no worker holds the embedding
    model, 504) when the tasks cannot be embedded."""
    check_config(config)
    control = config.controls[0]
    texts = [E.task_text(config, t.get("data")) if isinstance(t.get("data"), dict) else None for t in tasks]
    index, vectors = E.index_and_queries(project, config, texts, timeout=timeout)
    if index.matrix is None:
        return [TaskPrediction([], None, NO_GROUND_TRUTH) for _ in tasks]
    asked = [i for i, text in enumerate(texts) if text in vectors]
    # A task that is itself ground truth is predicted by a model that never saw it (one
    # extra fit, without every such task of this call), so its prediction is not its label.
    ids = {e.task_id for e in index.examples}
    own = {_task_id(tasks[i]) for i in asked} & ids
    answers = {}
    groups = [
        ([i for i in asked if _task_id(tasks[i]) not in own], None),
        ([i for i in asked if _task_id(tasks[i]) in own], own),
    ]
    for members, left_out in groups:
        if not members:
            continue
        if left_out is None:
            model = fitted(project, index)
        else:
            kept = [n for n, e in enumerate(index.examples) if e.task_id not in left_out]
            if not kept:
                continue
            model = BlendVote().fit(index.matrix[kept], [index.examples[n].answer for n in kept])
        answers.update(zip(members, model.predict([vectors[texts[i]] for i in members]), strict=True))
    predictions = [TaskPrediction([], None, "the task has no text for the labeling config") for _ in tasks]
    for i, (label, score) in sorted(answers.items()):
        item = {
            "from_name": control.name,
            "to_name": control.to_name,
            "type": "choices",
            "value": {"choices": [label]},
        }
        predictions[i] = TaskPrediction([item], score)
    for i, text in enumerate(texts):
        if text is not None and i not in answers:
            reason = (
                "the task's text could not be embedded in this call"
                if i not in asked
                else "no ground truth besides the tasks of this call: nothing else to learn from"
            )
            predictions[i] = TaskPrediction([], None, reason)
    return predictions


def _task_id(task):
    task_id = task.get("id")
    return task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else None
