"""A project's ground truth as examples to learn from: one per task (its text, its
data and the answer in the guided format), with the text's vector from the
project's embedding model.

Vectors are stored per (embedding model, text hash) in TextEmbedding and computed
through workers.inference.embed: at /predict time the missing ones together with
the tasks' own texts in one call (at most PREDICT_EMBED_LIMIT texts), offline
(`manage.py labelstudio embed`, the comparison) all of them in calls of
EMBED_CHUNK. Nothing is embedded in the webhook path.
"""

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from workers import inference

from .label_config import object_text
from .models import Annotation, TextEmbedding
from .predictions import answer_text

logger = logging.getLogger(__name__)

EMBED_CHUNK = 256  # texts per embed call
PREDICT_EMBED_LIMIT = 256  # texts one /predict embeds at most, its tasks' first
MAX_EMBED_CHARS = 1000  # all-MiniLM-L6-v2 reads 256 word pieces at most; the rest is cut here
CACHE_SIZE = 16  # fitted indexes kept per process


@dataclass(frozen=True)
class Example:
    task_id: int  # Label Studio's task id
    data: dict
    result: list
    text: str
    answer: str


def task_text(config, data):
    """The text the config's controls are about (each object's text once, in
    order), cut to MAX_EMBED_CHARS; None when the task lacks one."""
    texts = []
    for name in dict.fromkeys(c.to_name for c in config.controls):
        text = object_text(config.objects[name], data)
        if text is None:
            return None
        texts.append(text)
    return "\n\n".join(texts)[:MAX_EMBED_CHARS] if texts else None


def text_key(text):
    return hashlib.sha256(text.encode()).hexdigest()


def ground_truth_examples(project, config):
    """One Example per task with live, valid ground truth (the annotation marked
    most recently when a task has several), ordered by task id. Annotations whose
    result has no valid answer for every control are left out."""
    annotations = (
        Annotation.objects.filter(
            project=project, ground_truth=True, valid=True, deleted_at__isnull=True, task__deleted_at__isnull=True
        )
        .select_related("task")
        .order_by("task__ls_task_id", "-ground_truth_at", "-id")
    )
    examples, seen = [], set()
    for annotation in annotations.iterator(chunk_size=2000):
        task = annotation.task
        if task.ls_task_id in seen:
            continue
        seen.add(task.ls_task_id)
        data = task.data if isinstance(task.data, dict) else {}
        text = task_text(config, data)
        answer = answer_text(config, annotation.result, data) if text is not None else None
        if answer is not None:
            examples.append(Example(task.ls_task_id, data, annotation.result, text, answer))
    return examples


# Stored vectors ----------------------------------------------------------------


def stored_vectors(model_name, texts):
    """{text: vector} for the texts that have one stored."""
    by_key = {text_key(t): t for t in texts}
    keys, found = list(by_key), {}
    for start in range(0, len(keys), 500):  # SQLite bounds the parameters of one query
        rows = TextEmbedding.objects.filter(
            model_name=model_name, text_sha256__in=keys[start : start + 500]
        ).values_list("text_sha256", "vector")
        found.update((by_key[key], np.frombuffer(bytes(vector), dtype="<f4")) for key, vector in rows)
    return found


def embed_and_store(model_name, texts, *, timeout=None):
    """Embeds `texts` in one call and stores the vectors: {text: vector}. Raises the
    inference errors (ApiError: no worker holds the model, timeout...)."""
    texts = list(dict.fromkeys(texts))
    if not texts:
        return {}
    vectors = [np.asarray(v, dtype="<f4") for v in inference.embed(texts, model=model_name, timeout=timeout)]
    TextEmbedding.objects.bulk_create(
        [
            TextEmbedding(model_name=model_name, text_sha256=text_key(t), vector=v.tobytes(), dimensions=len(v))
            for t, v in zip(texts, vectors, strict=True)
        ],
        ignore_conflicts=True,  # another process stored the same text meanwhile
    )
    return dict(zip(texts, vectors, strict=True))


def vectors_for(model_name, texts, *, timeout=None):
    """{text: vector} for every text: stored ones read, the others embedded in calls of EMBED_CHUNK."""
    found = stored_vectors(model_name, texts)
    missing = [t for t in dict.fromkeys(texts) if t not in found]
    for start in range(0, len(missing), EMBED_CHUNK):
        found.update(embed_and_store(model_name, missing[start : start + EMBED_CHUNK], timeout=timeout))
    return found


# The index of a project's ground truth --------------------------------------------


@dataclass
class Index:
    """Ground-truth examples that have vectors, and those vectors as rows."""

    examples: list
    matrix: np.ndarray | None
    complete: bool  # every example has its vector


_cache = OrderedDict()
_cache_lock = threading.Lock()


def _cache_key(project, config_text, model_name):
    return (project.pk, project.ground_truth_revision, model_name, text_key(config_text))


def _build(examples, vectors):
    kept = [e for e in examples if e.text in vectors]
    matrix = np.vstack([vectors[e.text] for e in kept]) if kept else None
    return Index(kept, matrix, complete=len(kept) == len(examples))


def cached(key):
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    return None


def remember(key, value):
    with _cache_lock:
        _cache[key] = value
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)


def index_and_queries(project, config, query_texts, *, timeout=None, limit=None):
    """(Index of the project's ground truth, {query text: vector}) with at most one
    embed call, for at most `limit` texts: the queries' first, then ground truth
    that has no vector yet (the rest is embedded by later calls). The index is
    cached per (project, ground-truth revision, embedding model, config) once
    complete. Raises the inference errors when the embed call fails."""
    model_name = project.embedding_model_name()
    key = _cache_key(project, project.label_config, model_name)
    index = cached(key)
    examples = None
    if index is None:
        examples = ground_truth_examples(project, config)
    wanted = dict.fromkeys(t for t in query_texts if t is not None)
    if examples is not None:
        wanted.update(dict.fromkeys(e.text for e in examples))
    wanted = list(wanted)
    found = stored_vectors(model_name, wanted) if wanted else {}
    missing = [t for t in wanted if t not in found][: limit or PREDICT_EMBED_LIMIT]
    if missing:
        logger.info("Label Studio project %s: embedding %d texts with %s", project.ls_project, len(missing), model_name)
        found.update(embed_and_store(model_name, missing, timeout=timeout))
    if index is None:
        index = _build(examples, found)
        if index.complete:
            remember(key, index)
    return index, {t: found[t] for t in query_texts if t is not None and t in found}


def embed_ground_truth(project, *, timeout=None):
    """Embeds every ground-truth example that has no vector yet; the number embedded."""
    config = project.parsed_config()
    model_name = project.embedding_model_name()
    texts = list(dict.fromkeys(e.text for e in ground_truth_examples(project, config)))
    missing = [t for t in texts if t not in stored_vectors(model_name, texts)]
    vectors_for(model_name, missing, timeout=timeout or settings.LABEL_STUDIO_PREDICT_TIMEOUT)
    return len(missing)
