"""Predictors that learn a Choices label from ground-truth annotations through text embeddings.

No Django and no engine: they take vectors (all-MiniLM-L6-v2 embeddings from
`workers.inference.embed` in the product, anything in the tests), so the caller
embeds the texts and stores the vectors. Every predictor has
`fit(vectors, labels) -> self` and `predict(vectors) -> [(label, score)]` with
score in [0, 1], is deterministic (the same examples in the same order give the
same predictions), and is refitted from scratch as annotations arrive: a fit on
2,000 examples takes well under a second.

`LogisticVote` is the one the project offers; `KnnVote(k=15)` is the baseline it
is measured against (bench/labeling_bench.py, bench/README.md).
"""

from collections import Counter

import numpy as np

__all__ = ["PREDICTORS", "KnnVote", "LogisticVote", "MajorityClass", "nearest"]


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


class LogisticVote:
    """Multinomial logistic regression (L2, C=3) on unit-length embeddings; score =
    the predicted label's probability. With a single label among the examples it
    predicts that label with score 1.

    C=3 was the best of 1, 3 and 10 on the sentiment benchmark at every size from
    20 to 2,000 examples; it beats kNN (k=15) at each (bench/README.md)."""

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

            self.model = LogisticRegression(C=self.C, max_iter=1000).fit(x, labels)
        return self

    def predict(self, vectors):
        x = _matrix(vectors, dim=self.dim)
        if self.model is None:
            return [(self.classes[0], 1.0)] * len(x)
        probabilities = self.model.predict_proba(x)
        best = np.argmax(probabilities, axis=1)  # the first of equal probabilities: sorted order
        return [(str(self.model.classes_[i]), float(p[i])) for i, p in zip(best, probabilities, strict=True)]


PREDICTORS = {"embedding-logistic": LogisticVote, "embedding-knn": KnnVote}
