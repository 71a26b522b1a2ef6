"""Accuracy figures against values computed by hand (each test spells out the counts)."""

import json
import random
from pathlib import Path

import pytest

from labeling.accuracy import (
    accuracy_by_control,
    multi_choice_metrics,
    rating_metrics,
    single_choice_metrics,
    span_metrics,
)

FIXTURES = Path(__file__).parent / "fixtures"


def choice(*picked, name="sentiment"):
    return {"from_name": name, "to_name": "text", "type": "choices", "value": {"choices": list(picked)}}


def span(start, end, *labels, name="label"):
    value = {"start": start, "end": end, "text": "x" * (end - start), "labels": list(labels)}
    return {"from_name": name, "to_name": "text", "type": "labels", "value": value}


def rating(value, name="quality", kind="rating"):
    return {"from_name": name, "to_name": "text", "type": kind, "value": {kind: value}}


SENTIMENT = ["Positive", "Negative", "Neutral", "Mixed"]


def sentiment_items():
    return [
        (1, [choice("Positive")], [choice("Positive")]),
        (2, [choice("Negative")], [choice("Positive")]),
        (3, [choice("Negative")], [choice("Negative")]),
        (4, {"result": [choice("Negative")], "score": 0.9}, {"result": [choice("Negative")]}),
        (5, [choice("Positive")], [choice("Neutral")]),
        (6, None, [choice("Neutral")]),  # no prediction
        (7, [], [choice("Positive")]),  # a prediction without this control: missing
        (8, [choice("Positive")], None),  # no ground truth: not scored
        (9, [choice("Positive")], []),  # ground truth without a choice: not scored
    ]


def test_single_choice_counts_missing_predictions_as_wrong():
    m = single_choice_metrics(sentiment_items(), from_name="sentiment", labels=SENTIMENT)
    assert (m["tasks"], m["predicted"], m["missing_predictions"], m["tasks_without_label"]) == (7, 5, 2, 1)
    assert m["coverage"] == pytest.approx(5 / 7)
    assert m["accuracy"] == pytest.approx(3 / 7)  # tasks 1, 3, 4 right out of 7
    assert m["accuracy_predicted"] == pytest.approx(3 / 5)
    # Positive: TP 1 (t1), FP 1 (t5), FN 2 (t2 wrong, t7 missing)
    assert m["per_label"]["Positive"] == pytest.approx(
        {"precision": 1 / 2, "recall": 1 / 3, "f1": 2 / 5, "support": 3, "predicted": 2}
    )
    # Negative: TP 2 (t3, t4), FP 1 (t2), FN 0
    assert m["per_label"]["Negative"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 4 / 5, "support": 2, "predicted": 3}
    )
    # Neutral: never predicted, both tasks missed: precision undefined, F1 0
    assert m["per_label"]["Neutral"] == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 2, "predicted": 0}


def test_single_choice_empty_class_is_null_and_left_out_of_macro():
    m = single_choice_metrics(sentiment_items(), from_name="sentiment", labels=SENTIMENT)
    assert m["per_label"]["Mixed"] == {"precision": None, "recall": None, "f1": None, "support": 0, "predicted": 0}
    assert m["macro_f1"] == pytest.approx((2 / 5 + 4 / 5 + 0) / 3)
    # micro: TP 3, FP 2, FN 4 -> 6 / 12
    assert m["micro_f1"] == pytest.approx(0.5)
    json.dumps(m)


def test_single_choice_confusion_matrix_in_config_order():
    m = single_choice_metrics(sentiment_items(), from_name="sentiment", labels=SENTIMENT)
    assert m["labels"] == SENTIMENT
    assert m["confusion_matrix"] == {
        "labels": SENTIMENT,
        "matrix": [
            [1, 1, 0, 0],  # true Positive: t1 right, t2 as Negative (t7 missing)
            [0, 2, 0, 0],
            [1, 0, 0, 0],  # true Neutral: t5 as Positive (t6 missing)
            [0, 0, 0, 0],
        ],
        "no_prediction": [1, 0, 1, 0],
    }


def test_single_choice_all_wrong():
    items = [
        (1, [choice("B")], [choice("A")]),
        (2, [choice("B")], [choice("A")]),
        (3, [choice("A")], [choice("B")]),
    ]
    m = single_choice_metrics(items, labels=["A", "B"])
    assert (m["accuracy"], m["accuracy_predicted"], m["macro_f1"], m["micro_f1"]) == (0.0, 0.0, 0.0, 0.0)
    # A: TP 0, FP 1, FN 2; B: TP 0, FP 2, FN 1
    assert m["per_label"]["A"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2, "predicted": 1}
    assert m["per_label"]["B"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 2}
    assert m["confusion_matrix"]["matrix"] == [[0, 2], [1, 0]]


def test_single_choice_without_any_ground_truth():
    m = single_choice_metrics([(1, [choice("A")], None)], labels=["A", "B"])
    assert (m["tasks"], m["predicted"], m["coverage"], m["accuracy"], m["accuracy_predicted"]) == (
        0,
        0,
        None,
        None,
        None,
    )
    assert (m["macro_f1"], m["micro_f1"]) == (None, None)
    assert m["per_label"]["A"]["f1"] is None
    assert m["confusion_matrix"]["matrix"] == [[0, 0], [0, 0]]
    assert single_choice_metrics([])["labels"] == []


def test_single_choice_labels_outside_the_config_come_after_it_sorted():
    items = [(1, [choice("Zebra")], [choice("A")]), (2, [choice("Other")], [choice("B")])]
    m = single_choice_metrics(items, labels=["B", "A"])
    assert m["labels"] == ["B", "A", "Other", "Zebra"]
    assert m["per_label"]["Zebra"] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0, "predicted": 1}
    assert m["confusion_matrix"]["matrix"][1] == [0, 0, 0, 1]


def test_single_choice_only_reads_its_own_control():
    items = [(1, [choice("A", name="other"), choice("B")], [choice("B"), choice("A", name="other")])]
    assert single_choice_metrics(items, from_name="sentiment")["accuracy"] == 1.0
    assert single_choice_metrics(items, from_name="other")["accuracy"] == 1.0


def test_duplicate_task_is_an_error():
    with pytest.raises(ValueError, match="task 1 appears more than once"):
        single_choice_metrics([(1, None, [choice("A")]), (1, None, [choice("B")])])


def test_multi_choice_exact_set_and_per_label():
    items = [
        (1, [choice("a", "b", name="tags")], [choice("a", "b", name="tags")]),
        (2, [choice("a", "c", name="tags")], [choice("a", name="tags")]),
        (3, [choice("b", name="tags")], [choice("b", "c", name="tags")]),
        (4, [], []),  # nothing chosen and nothing predicted: an exact match
        (5, None, [choice("c", name="tags")]),  # missing
    ]
    m = multi_choice_metrics(items, from_name="tags", labels=["a", "b", "c", "d"])
    assert (m["tasks"], m["predicted"], m["missing_predictions"]) == (5, 4, 1)
    assert m["accuracy"] == pytest.approx(2 / 5)  # tasks 1 and 4
    assert m["accuracy_predicted"] == pytest.approx(2 / 4)
    assert m["per_label"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2, "predicted": 2}
    assert m["per_label"]["b"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2, "predicted": 2}
    # c: FP 1 (t2), FN 2 (t3, t5 missing)
    assert m["per_label"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2, "predicted": 1}
    assert m["per_label"]["d"]["f1"] is None
    assert m["macro_f1"] == pytest.approx(2 / 3)
    assert m["micro_f1"] == pytest.approx(8 / 11)  # TP 4, FP 1, FN 2


def ner_items():
    return [
        (1, [span(0, 6, "PER"), span(12, 20, "ORG")], [span(0, 6, "PER"), span(10, 20, "ORG")]),
        (2, [span(0, 4, "PER"), span(5, 10, "PER"), span(0, 10, "ORG")], [span(0, 10, "PER")]),
        (3, [span(3, 8, "PER"), span(3, 8, "PER")], [span(0, 5, "PER"), span(0, 5, "PER")]),  # duplicates
        (4, [span(1, 3, "ORG")], []),  # the truth says "no entities"
        (5, None, [span(2, 4, "ORG")]),  # missing
        (6, [span(0, 3, "PER")], [span(0, 3, "PER", "ORG")]),  # one item, two labels
        (7, [], []),
    ]


def test_span_exact_match():
    m = span_metrics(ner_items(), from_name="label", labels=["PER", "ORG", "LOC"])
    assert (m["tasks"], m["predicted"], m["true_spans"], m["predicted_spans"]) == (7, 6, 7, 8)
    assert m["accuracy"] == pytest.approx(1 / 7)  # only task 7 has exactly the true spans
    assert m["accuracy_predicted"] == pytest.approx(1 / 6)
    exact = m["exact"]
    # PER: TP 2 (t1, t6), FP 3 (t2 x2, t3), FN 2 (t2, t3)
    assert exact["per_label"]["PER"] == pytest.approx(
        {"precision": 2 / 5, "recall": 2 / 4, "f1": 4 / 9, "support": 4, "predicted": 5}
    )
    # ORG: TP 0, FP 3 (t1, t2, t4), FN 3 (t1, t5, t6)
    assert exact["per_label"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3, "predicted": 3}
    assert exact["per_label"]["LOC"]["f1"] is None
    assert exact["precision"] == pytest.approx(2 / 8)
    assert exact["recall"] == pytest.approx(2 / 7)
    assert exact["f1"] == pytest.approx(4 / 15)
    assert exact["macro_f1"] == pytest.approx(2 / 9)


def test_span_overlap_match():
    overlap = span_metrics(ner_items(), from_name="label", labels=["PER", "ORG", "LOC"])["overlap"]
    # PER: t1, t2 ((5,10) overlaps 5 > (0,4) 4), t3 (2 chars), t6 -> TP 4; t2's (0,4) is FP 1
    assert overlap["per_label"]["PER"] == pytest.approx(
        {"precision": 4 / 5, "recall": 1.0, "f1": 8 / 9, "support": 4, "predicted": 5}
    )
    # ORG: TP 1 (t1, 8 chars), FP 2 (t2 other label, t4), FN 2 (t5, t6)
    assert overlap["per_label"]["ORG"] == pytest.approx(
        {"precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3, "support": 3, "predicted": 3}
    )
    assert (overlap["precision"], overlap["recall"], overlap["f1"]) == pytest.approx((5 / 8, 5 / 7, 2 / 3))
    assert overlap["macro_f1"] == pytest.approx((8 / 9 + 1 / 3) / 2)


def test_span_overlap_is_greedy_by_largest_overlap_not_maximum_matching():
    # P(2,11) overlaps T(0,10) by 8 and T(10,12) by 1; P(0,3) overlaps T(0,10) by 3.
    # Greedy takes the 8 first, and then neither other pair is free: 1 TP, not 2.
    items = [(1, [span(2, 11, "X"), span(0, 3, "X")], [span(0, 10, "X"), span(10, 12, "X")])]
    m = span_metrics(items)["overlap"]
    assert (m["precision"], m["recall"]) == (0.5, 0.5)
    # Touching spans share no character.
    assert span_metrics([(1, [span(5, 8, "X")], [span(0, 5, "X")])])["overlap"]["f1"] == 0.0


def test_span_figures_do_not_depend_on_order():
    items = ner_items()
    expected = span_metrics(items, labels=["PER", "ORG", "LOC"])
    shuffled = [(task, p and random.Random(task).sample(p, len(p)), list(reversed(t))) for task, p, t in items]
    random.Random(0).shuffle(shuffled)
    assert span_metrics(shuffled, labels=["PER", "ORG", "LOC"]) == expected


def test_span_without_offsets_is_an_error():
    bad = {"from_name": "label", "type": "labels", "value": {"labels": ["PER"]}}
    with pytest.raises(ValueError, match="numeric start/end"):
        span_metrics([(1, [bad], [span(0, 1, "PER")])])


def test_rating_accuracy_and_mean_absolute_error():
    items = [
        (1, [rating(5)], [rating(5)]),
        (2, [rating(4)], [rating(3)]),
        (3, [rating(4)], [rating(1)]),
        (4, None, [rating(2)]),
        (5, [rating(2)], []),  # no true rating: not scored
    ]
    m = rating_metrics(items, from_name="quality")
    assert (m["tasks"], m["predicted"], m["missing_predictions"]) == (4, 3, 1)
    assert m["accuracy"] == pytest.approx(1 / 4)
    assert m["accuracy_predicted"] == pytest.approx(1 / 3)
    assert m["mae"] == pytest.approx((0 + 1 + 3) / 3)


def test_number_mae():
    items = [(1, [rating(3.0, kind="number")], [rating(2.5, kind="number")]), (2, None, [rating(1, kind="number")])]
    m = rating_metrics(items, kind="number")
    assert (m["accuracy"], m["mae"], m["coverage"]) == (0.0, 0.5, 0.5)
    assert rating_metrics([(1, None, [rating(1)])])["mae"] is None


def multi_control_items():
    return [
        (
            1,
            [choice("Positive"), choice("a", "b", name="tags"), span(0, 3, "PER"), rating(4)],
            [choice("Positive"), choice("a", name="tags"), span(0, 3, "PER"), rating(5)],
        ),
        (
            2,
            [choice("Negative"), span(1, 3, "PER")],
            [
                choice("Neutral"),
                choice("b", name="tags"),
                span(0, 3, "PER"),
                rating(3),
                {"from_name": "comment", "type": "textarea", "value": {"text": ["fine"]}},
            ],
        ),
        (3, None, [choice("Positive")]),
    ]


def test_accuracy_by_control_with_the_config():
    controls = {
        "sentiment": {"type": "Choices", "labels": SENTIMENT},
        "tags": {"type": "Choices", "labels": ["a", "b"], "multiple": True},
        "label": {"type": "Labels", "labels": ["PER"]},
        "quality": {"type": "Rating"},
        "comment": {"type": "TextArea"},
    }
    items = multi_control_items()
    out = accuracy_by_control(items, controls=controls)
    assert (out["tasks"], out["predicted"], out["missing_predictions"]) == (3, 2, 1)
    figures = out["controls"]
    assert figures["sentiment"] == single_choice_metrics(items, from_name="sentiment", labels=SENTIMENT)
    assert figures["sentiment"]["accuracy"] == pytest.approx(1 / 3)
    # tags: t1 {a,b} vs {a}, t2 {} vs {b}, t3 missing vs {}
    assert figures["tags"]["multiple"] is True
    assert figures["tags"]["accuracy"] == 0.0
    assert figures["tags"]["per_label"]["a"]["f1"] == 1.0
    assert figures["tags"]["per_label"]["b"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
        "predicted": 1,
    }
    assert figures["label"]["exact"]["f1"] == pytest.approx(2 / 4)  # TP 1, FP 1, FN 1
    assert figures["label"]["overlap"]["f1"] == 1.0
    assert (figures["quality"]["mae"], figures["quality"]["tasks"]) == (1.0, 2)
    assert figures["comment"] == {"type": "textarea", "supported": False}
    json.dumps(out)


def test_accuracy_by_control_reads_the_controls_off_the_results():
    figures = accuracy_by_control(multi_control_items())["controls"]
    assert set(figures) == {"sentiment", "tags", "label", "quality", "comment"}
    assert figures["tags"]["multiple"] is True  # t1 predicts two choices
    assert figures["sentiment"]["multiple"] is False
    assert figures["sentiment"]["labels"] == ["Negative", "Neutral", "Positive"]
    assert figures["label"]["type"] == "labels"
    assert accuracy_by_control([]) == {"tasks": 0, "predicted": 0, "missing_predictions": 0, "controls": {}}


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="the shared Label Studio fixtures are not beside the checkout")
def test_real_label_studio_results():
    def body(name):
        return json.loads((FIXTURES / name).read_text())

    prediction = body("ls_stored_predictions_cls.json")["response"][0]  # task 1: Positive
    event = body("webhook_ANNOTATION_CREATED.json")["request"]["body"]
    annotation = event["annotation"]  # Negative
    controls = event["project"]["parsed_label_config"]
    out = accuracy_by_control([(1, prediction, annotation)], controls=controls)["controls"]["sentiment"]
    assert (out["labels"], out["accuracy"]) == (["Positive", "Negative", "Neutral"], 0.0)
    assert out["confusion_matrix"]["matrix"] == [[0, 0, 0], [1, 0, 0], [0, 0, 0]]

    ner = body("ls_stored_predictions_ner.json")["response"][0]
    figures = span_metrics([(4, ner, ner["result"])], from_name="label")
    assert (figures["exact"]["f1"], figures["overlap"]["f1"], figures["true_spans"]) == (1.0, 1.0, 1)
