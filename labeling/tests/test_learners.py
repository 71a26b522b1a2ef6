"""Embedding predictors on small hand-made vectors."""

import numpy as np
import pytest

from labeling.learners import PREDICTORS, BlendVote, KnnVote, LogisticVote, MajorityClass, nearest


def clusters(seed=0, per_class=10, dim=8):
    """Three well-separated clusters around the first three axes."""
    rng = np.random.default_rng(seed)
    vectors, labels = [], []
    for axis, label in enumerate(["neg", "neu", "pos"]):
        centre = np.zeros(dim)
        centre[axis] = 1.0
        vectors.append(centre + 0.1 * rng.standard_normal((per_class, dim)))
        labels += [label] * per_class
    return np.vstack(vectors), labels


def queries():
    return [[2, 0.1, 0, 0, 0, 0, 0, 0], [0, 1, 0.1, 0, 0, 0, 0, 0], [0.1, 0, 3, 0, 0, 0, 0, 0]]


@pytest.mark.parametrize("make", [BlendVote, LogisticVote, KnnVote, lambda: KnnVote(k=1)])
def test_separable_clusters_are_learned(make):
    vectors, labels = clusters()
    predictions = make().fit(vectors, labels).predict(queries())
    assert [label for label, _ in predictions] == ["neg", "neu", "pos"]
    assert all(0.0 <= score <= 1.0 for _, score in predictions)


@pytest.mark.parametrize("make", [BlendVote, LogisticVote])
def test_confident_on_clear_cases_and_unsure_between_clusters(make):
    vectors, labels = clusters()
    model = make().fit(vectors.tolist(), labels)
    (_, clear), (_, between) = model.predict([[1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]])
    assert clear > 0.6
    assert 1 / 3 <= between < clear


def test_blend_mixes_logistic_and_a_similarity_weighted_vote():
    vectors = [[1, 0], [0, 1], [0.8, 0.6]]
    labels = ["a", "b", "b"]
    query = [[1, 0]]
    blend = BlendVote(k=2, temperature=0.1).fit(vectors, labels)
    logistic = LogisticVote().fit(vectors, labels).probabilities(query)[0]
    # the 2 nearest: [1, 0] (a, similarity 1) and [0.8, 0.6] (b, 0.8), weights 1 and e^-2
    vote_a = 1 / (1 + np.exp(-2))
    share = 0.5 * 3 / (3 + 50)
    expected = (1 - share) * logistic + share * np.array([vote_a, 1 - vote_a])
    assert blend.probabilities(query)[0] == pytest.approx(expected)
    assert blend.predict(query) == [("a", pytest.approx(expected[0]))]
    assert blend.probabilities([[0, 1], [1, 1]]).sum(axis=1) == pytest.approx([1.0, 1.0])


def test_knn_score_is_the_share_of_votes():
    vectors = [[1, 0], [1, 0.1], [1, 0.2], [0, 1]]
    labels = ["a", "a", "b", "b"]
    assert KnnVote(k=3).fit(vectors, labels).predict([[1, 0]]) == [("a", pytest.approx(2 / 3))]
    # k larger than the examples: every example votes
    assert KnnVote(k=15).fit(vectors, labels).predict([[1, 0]])[0][1] == pytest.approx(2 / 4)


def test_knn_tie_goes_to_the_more_similar_voters_then_sorted_order():
    vectors = [[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]]
    labels = ["b", "b", "a", "a"]
    # two votes each; the "b" voters are closer to the query
    assert KnnVote(k=4).fit(vectors, labels).predict([[1, 0.05]]) == [("b", 0.5)]
    # equally close voters: the first label in sorted order
    assert KnnVote(k=2).fit([[1, 0], [0, 1]], ["z", "y"]).predict([[1, 1]]) == [("y", 0.5)]


def test_one_label_only():
    vectors, _ = clusters(per_class=3)
    for make in (BlendVote, LogisticVote, KnnVote, MajorityClass):
        assert make().fit(vectors, ["pos"] * len(vectors)).predict(queries()) == [("pos", 1.0)] * 3


def test_majority_class():
    model = MajorityClass().fit([[1, 0]] * 5, ["b", "a", "b", "a", "c"])
    assert model.predict([[0, 1], [1, 1]]) == [("a", 0.4), ("a", 0.4)]  # a and b tie: sorted order


def test_same_examples_give_the_same_predictions():
    vectors, labels = clusters(seed=1)
    noisy = np.random.default_rng(2).standard_normal((20, 8))
    for make in PREDICTORS.values():
        first = make().fit(vectors, labels).predict(noisy)
        assert make().fit(vectors.copy(), list(labels)).predict(noisy) == first


@pytest.mark.parametrize("make", [BlendVote, LogisticVote])
def test_refit_follows_new_annotations(make):
    vectors, labels = clusters()
    model = make().fit(vectors, labels)
    assert model.predict([[0, 0, 0, 1, 0, 0, 0, 0]])[0][0] != "other"
    more = np.vstack([vectors, np.tile([0, 0, 0, 1, 0, 0, 0, 0], (5, 1))])
    model.fit(more, labels + ["other"] * 5)
    assert model.predict([[0, 0, 0, 1, 0, 0, 0, 0]])[0][0] == "other"


@pytest.mark.parametrize("make", list(PREDICTORS.values()))
def test_length_does_not_matter_only_direction(make):
    vectors, labels = clusters()
    model = make().fit(vectors, labels)
    assert model.predict([[5, 0, 0, 0, 0, 0, 0, 0]]) == model.predict([[0.5, 0, 0, 0, 0, 0, 0, 0]])


def test_nearest():
    examples = [[1, 0], [0, 1], [1, 1], [1, 0]]
    (first,) = nearest(examples, [[1, 0]], k=3)
    assert [index for index, _ in first] == [0, 3, 2]  # equal similarity: example order
    assert [round(s, 4) for _, s in first] == [1.0, 1.0, 0.7071]


@pytest.mark.parametrize(
    ("vectors", "labels", "message"),
    [
        ([], [], "non-empty"),
        ([[1, 0], [0, 1]], ["a"], "2 vectors but 1 labels"),
        ([[1, float("nan")]], ["a"], "NaN"),
    ],
)
def test_bad_examples_are_refused(vectors, labels, message):
    for make in PREDICTORS.values():
        with pytest.raises(ValueError, match=message):
            make().fit(vectors, labels)


def test_query_of_another_dimension_is_refused():
    for make in PREDICTORS.values():
        model = make().fit([[1, 0], [0, 1]], ["a", "b"])
        with pytest.raises(ValueError, match="3 dimensions, the examples have 2"):
            model.predict([[1, 0, 0]])
