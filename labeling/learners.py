"""Predictors that learn a Choices label from ground-truth annotations through text embeddings.

No Django and no engine: they take vectors (all-MiniLM-L6-v2 embeddings from
`workers.inference.embed` in the product, anything in the tests), so the caller
embeds the texts and stores the vectors. Every predictor has
`fit(vectors, labels) -> self` and `predict(vectors) -> [(label, score)]` with
score in [0, 1], is deterministic (the same examples in the same order give the
same predictions), and is refitted from scratch as annotations arrive: a fit on
2,000 examples takes well under a second.

`BlendVote` is the one the project offers; `KnnVote(k=15)` is the baseline it is
measured against (bench/labeling_bench.py, bench/README.md).
"""

from collections import Counter

import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["PREDICTORS", "BlendVote", "KnnVote", "LogisticVote", "MajorityClass", "nearest"]


def _matrix(vectors, dim=None):
    """Rows scaled to unit length (a zero row stays zero), as float64."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or not x.shape[0] or not x.shape[1]:
        raise ValueError(f"expected a non-empty list of vectors, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"vectors have {x.shape[1]} dimensions, the examples have {dim}")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _examples(vectors, labels):
    x = _matrix(vectors)
    labels = [str(label) for label in labels]
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} vectors but {len(labels)} labels")
    return x, labels


def nearest(examples, queries, k):
    """For each query, the k most similar examples by cosine: [[(index, similarity)]],
    most similar first, ties in example order."""
    x = _matrix(examples)
    q = _matrix(queries, dim=x.shape[1])
    k = min(k, len(x))
    similarity = q @ x.T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return [[(int(i), float(row[i])) for i in idx] for row, idx in zip(similarity, order, strict=True)]


class MajorityClass:
    """Always the most frequent label (ties: the first in sorted order); score = its share."""

    def fit(self, vectors, labels):
        x, labels = _examples(vectors, labels)
        counts = Counter(labels)
        self.label = min(counts, key=lambda label: (-counts[label], label))
        self.score = counts[self.label] / len(labels)
        self.dim = x.shape[1]
        return self

    def predict(self, vectors):
        return [(self.label, self.score)] * len(_matrix(vectors, dim=self.dim))


class KnnVote:
    """The labels of the k nearest examples by cosine, majority vote; score = the
    winner's share of the k votes. A tied vote goes to the label whose voters are
    more similar in total, then to the first in sorted order."""

    def __init__(self, k=15):
        if k < 1:
            raise ValueError("k must be at least 1")
        self.k = k

    def fit(self, vectors, labels):
        self.x, self.labels = _examples(vectors, labels)
        return self

    def predict(self, vectors):
        answers = []
        for neighbours in nearest(self.x, vectors, self.k):
            votes, weight = Counter(), Counter()
            for index, similarity in neighbours:
                votes[self.labels[index]] += 1
                weight[self.labels[index]] += similarity
            label = min(votes, key=lambda label: (-votes[label], -weight[label], label))
            answers.append((label, votes[label] / len(neighbours)))
        return answers


def _answers(classes, probabilities):
    best = np.argmax(probabilities, axis=1)  # the first of equal probabilities: sorted order
    return [(classes[i], float(min(1.0, row[i]))) for i, row in zip(best, probabilities, strict=True)]


class LogisticVote:
    """Multinomial logistic regression (L2, C=3) on unit-length embeddings; score =
    the predicted label's probability. With a single label among the examples it
    predicts that label with score 1."""

    def __init__(self, C=3.0):
        self.C = C

    def fit(self, vectors, labels):
        x, labels = _examples(vectors, labels)
        self.dim = x.shape[1]
        self.classes = sorted(set(labels))
        self.model = None
        if len(self.classes) > 1:
            # Imported here so that importing this module stays cheap for the web process.
            from sklearn.linear_model import LogisticRegression

            # BLAS threads on a busy 2-core host (the engine computing beside us) make this
            # small fit 10-30 times slower than one thread does.
            with threadpool_limits(limits=1):
                self.model = LogisticRegression(C=self.C, max_iter=1000).fit(x, labels)
        return self

    def probabilities(self, vectors):
        """One row per vector, one column per label of `self.classes` (sorted)."""
        x = _matrix(vectors, dim=self.dim)
        if self.model is None:
            return np.ones((len(x), 1))
        with threadpool_limits(limits=1):
            return self.model.predict_proba(x)

    def predict(self, vectors):
        return _answers(self.classes, self.probabilities(vectors))


class BlendVote:
    """The project's predictor: LogisticVote's probabilities blended with a vote of the
    k nearest examples, each weighted by exp((similarity - best similarity) / temperature).
    The vote's share of the blend grows with the number of examples n, as
    0.5 n / (n + 50): with a handful of examples the k nearest are most of them and
    their vote says little, with thousands it adds the local structure a linear model
    misses. Score = the predicted label's blended probability.

    C, k, the temperature and the blend rule were chosen on two samples of the sentiment
    benchmark (bench/README.md); on a third it beat kNN (k=15) at every size from 20 to
    2,000 examples. Logistic regression alone fell behind kNN at 200 on one sample."""

    def __init__(self, C=3.0, k=15, temperature=0.1):
        if k < 1 or temperature <= 0:
            raise ValueError("k must be at least 1 and the temperature positive")
        self.C, self.k, self.temperature = C, k, temperature

    def fit(self, vectors, labels):
        self.x, labels = _examples(vectors, labels)
        self.logistic = LogisticVote(C=self.C).fit(self.x, labels)
        self.classes = self.logistic.classes
        index = {label: i for i, label in enumerate(self.classes)}
        self.y = np.array([index[label] for label in labels])
        self.weight = 0.5 * len(labels) / (len(labels) + 50)
        return self

    def probabilities(self, vectors):
        """One row per vector, one column per label of `self.classes` (sorted), rows summing to 1."""
        q = _matrix(vectors, dim=self.x.shape[1])
        similarity = q @ self.x.T
        nearest_k = np.argsort(-similarity, axis=1, kind="stable")[:, : self.k]
        close = np.take_along_axis(similarity, nearest_k, axis=1)
        weights = np.exp((close - close[:, :1]) / self.temperature)
        votes = np.zeros((len(q), len(self.classes)))
        np.add.at(votes, (np.arange(len(q))[:, None], self.y[nearest_k]), weights)
        votes /= votes.sum(axis=1, keepdims=True)
        return (1 - self.weight) * self.logistic.probabilities(q) + self.weight * votes

    def predict(self, vectors):
        return _answers(self.classes, self.probabilities(vectors))


PREDICTORS = {"embedding-blend": BlendVote, "embedding-logistic": LogisticVote, "embedding-knn": KnnVote}
