"""A project's accuracy from stored rows: which ground truth and predictions count,
figures against hand-computed values, the cache, and another model over the
ground-truth tasks (a batch whose output is written by hand)."""

import json
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db.models import F
from django.utils import timezone

from jobs import services as jobs_services
from jobs.models import Batch, File
from labeling import evaluation
from labeling.models import Annotation, LabelingProject, LabelingTask, LabelStudioPrediction, PredictionLog
from workers.models import RegisteredModel

pytestmark = pytest.mark.django_db

CONFIG = (
    '<View><Text name="text" value="$text"/>'
    '<Choices name="sentiment" toName="text"><Choice value="Positive"/><Choice value="Negative"/>'
    '<Choice value="Neutral"/></Choices>'
    '<Rating name="stars" toName="text" maxRating="5"/>'
    '<TextArea name="comment" toName="text"/>'
    "</View>"
)
VERSION_A = "model-a@00000001"
VERSION_B = "model-b@00000002"
T0 = timezone.now() - timedelta(days=1)


def choice(value):
    return {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}


def stars(value):
    return {"from_name": "stars", "to_name": "text", "type": "rating", "value": {"rating": value}}


def make_project(ls_id=7):
    model = RegisteredModel.objects.get_or_create(name="tiny-llama", defaults={"path": "/m"})[0]
    return LabelingProject.objects.create(
        ls_project=f"{ls_id}.1700000000", ls_project_id=ls_id, label_config=CONFIG, model=model, title="Reviews"
    )


def task(project, ls_task_id, text="A review.", **fields):
    return LabelingTask.objects.create(project=project, ls_task_id=ls_task_id, data={"text": text}, **fields)


def annotation(project, the_task, ls_id, result, *, truth=True, at=None, **fields):
    return Annotation.objects.create(
        project=project,
        task=the_task,
        ls_annotation_id=ls_id,
        result=result,
        ground_truth=truth,
        ground_truth_at=(at or T0) if truth else None,
        **fields,
    )


def log(project, task_id, result, version=VERSION_A, error="", minutes=0):
    row = PredictionLog.objects.create(
        project=project, task_id=task_id, result=result, model_version=version, latency_ms=5, error=error
    )
    PredictionLog.objects.filter(pk=row.pk).update(created_at=T0 + timedelta(minutes=minutes))
    return row


def seed(project):
    """Five ground-truth tasks, four that must not count, and predictions of two versions.

    Ground truth (sentiment, stars): t1 Positive 4, t2 Negative 2 (a newer mark than
    an older "Positive" one), t3 Neutral 5, t4 Positive 3, t5 Negative 1. Not ground
    truth: t6 (invalid), t7 (annotation deleted), t8 (task deleted), t9 (not marked).
    """
    tasks = {n: task(project, n) for n in range(1, 10)}
    annotation(project, tasks[1], 101, [choice("Positive"), stars(4)])
    annotation(project, tasks[2], 102, [choice("Positive"), stars(2)], at=T0)
    annotation(project, tasks[2], 112, [choice("Negative"), stars(2)], at=T0 + timedelta(hours=1))
    annotation(project, tasks[3], 103, [choice("Neutral"), stars(5)])
    annotation(project, tasks[4], 104, [choice("Positive"), stars(3)])
    annotation(project, tasks[5], 105, [choice("Negative"), stars(1)])
    annotation(project, tasks[6], 106, [choice("Maybe")], valid=False, invalid_reason="not a choice")
    annotation(project, tasks[7], 107, [choice("Neutral")], deleted_at=T0)
    LabelingTask.objects.filter(pk=tasks[8].pk).update(deleted_at=T0)
    annotation(project, tasks[8], 108, [choice("Neutral")])
    annotation(project, tasks[9], 109, [choice("Neutral")], truth=False)

    # Version A: t1 right, t2 wrong, t3 first wrong then right (the newer counts), t4 failed
    # (no prediction), t5 from Label Studio (sync), t6 and t99 have no ground truth.
    log(project, 1, [choice("Positive"), stars(4)])
    log(project, 2, [choice("Positive"), stars(3)])
    log(project, 3, [choice("Negative"), stars(1)], minutes=1)
    log(project, 3, [choice("Neutral"), stars(5)], minutes=2)
    log(project, 4, [], error="generation failed: timeout")
    LabelStudioPrediction.objects.create(
        project=project,
        task=tasks[5],
        ls_prediction_id=501,
        result=[choice("Negative"), stars(3)],
        model_version=VERSION_A,
        ls_created_at=T0,
    )
    log(project, 6, [choice("Neutral")])
    log(project, 99, [choice("Neutral")])
    # Version B, sentiment only: t1 wrong, t2 right, t3 right.
    log(project, 1, [choice("Negative")], version=VERSION_B)
    log(project, 2, [choice("Negative")], version=VERSION_B)
    log(project, 3, [choice("Neutral")], version=VERSION_B)
    return tasks


@pytest.fixture
def project():
    cache.clear()
    project = make_project()
    seed(project)
    return project


def test_ground_truth_is_the_live_valid_marked_annotation_newest_mark_wins(project):
    truth = evaluation.ground_truth(project)
    assert sorted(truth) == [1, 2, 3, 4, 5]
    assert truth[2][0]["value"]["choices"] == ["Negative"]


def test_predictions_newest_per_task_from_the_log_and_label_studio_failed_ones_left_out(project):
    found = evaluation.predictions(project, VERSION_A)
    assert sorted(found) == [1, 2, 3, 5, 6, 99]
    assert found[3][0]["value"]["choices"] == ["Neutral"]
    assert found[5][0]["value"]["choices"] == ["Negative"]


def test_a_label_studio_prediction_newer_than_the_logged_one_wins(project):
    tasks = {t.ls_task_id: t for t in project.tasks.all()}
    LabelStudioPrediction.objects.create(
        project=project,
        task=tasks[1],
        ls_prediction_id=502,
        result=[choice("Neutral")],
        model_version=VERSION_A,
        ls_updated_at=T0 + timedelta(hours=2),
    )
    assert evaluation.predictions(project, VERSION_A)[1] == [choice("Neutral")]


def test_model_versions_lists_those_with_predictions_and_their_task_counts(project):
    versions = {v["model_version"]: v["predictions"] for v in evaluation.model_versions(project)}
    assert versions == {VERSION_A: 6, VERSION_B: 3}


def test_figures_against_hand_computed_values(project):
    figures = evaluation.project_accuracy(project, VERSION_A)
    assert figures["model_version"] == VERSION_A
    assert (figures["tasks"], figures["predicted"], figures["missing_predictions"]) == (5, 4, 1)
    assert figures["coverage"] == pytest.approx(0.8)
    assert figures["predictions_without_ground_truth"] == 2  # t6 (invalid truth) and t99

    sentiment = figures["controls"]["sentiment"]
    # Right: t1, t3, t5; wrong: t2; no prediction: t4.
    assert sentiment["accuracy"] == pytest.approx(3 / 5)
    assert sentiment["accuracy_predicted"] == pytest.approx(3 / 4)
    assert sentiment["confusion_matrix"] == {
        "labels": ["Positive", "Negative", "Neutral"],
        "matrix": [[1, 0, 0], [1, 1, 0], [0, 0, 1]],
        "no_prediction": [1, 0, 0],
    }
    per_label = sentiment["per_label"]
    # Positive: TP 1 (t1), FP 1 (t2), FN 1 (t4). Negative: TP 1 (t5), FN 1 (t2). Neutral: TP 1.
    assert (per_label["Positive"]["precision"], per_label["Positive"]["recall"]) == (0.5, 0.5)
    assert (per_label["Negative"]["precision"], per_label["Negative"]["recall"]) == (1.0, 0.5)
    assert per_label["Negative"]["f1"] == pytest.approx(2 / 3)
    assert per_label["Neutral"]["f1"] == 1.0
    assert sentiment["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert sentiment["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))

    rating = figures["controls"]["stars"]
    # t1 4=4, t2 3 vs 2, t3 5=5, t5 3 vs 1; t4 not predicted.
    assert rating["accuracy"] == pytest.approx(2 / 5)
    assert rating["mae"] == pytest.approx((0 + 1 + 0 + 2) / 4)
    assert figures["controls"]["comment"] == {"type": "textarea", "supported": False}


def test_comparison_uses_only_the_tasks_both_versions_predicted(project):
    result = evaluation.project_comparison(project, VERSION_A, VERSION_B)
    assert result["model_versions"] == [VERSION_A, VERSION_B]
    assert (result["tasks"], result["only_a"], result["only_b"]) == (3, 1, 0)  # t1-t3; t5 only A
    assert result["a"]["controls"]["sentiment"]["accuracy"] == pytest.approx(2 / 3)  # t1, t3
    assert result["b"]["controls"]["sentiment"]["accuracy"] == pytest.approx(2 / 3)  # t2, t3
    assert result["outcomes"]["sentiment"] == {
        "both_correct": 1,
        "only_a_correct": 1,
        "only_b_correct": 1,
        "both_wrong": 0,
    }
    # B gives no rating: A is right on t1 and t3, both wrong on t2.
    assert result["outcomes"]["stars"] == {"both_correct": 0, "only_a_correct": 2, "only_b_correct": 0, "both_wrong": 1}
    assert "comment" not in result["outcomes"]


def test_evaluate_and_compare_on_explicit_inputs():
    truth = {1: [choice("Positive")], 2: [choice("Negative")]}
    figures = evaluation.evaluate(truth=truth, predicted={1: [choice("Negative")], 3: [choice("Neutral")]})
    assert (figures["tasks"], figures["predicted"], figures["predictions_without_ground_truth"]) == (2, 1, 1)
    assert figures["controls"]["sentiment"]["accuracy"] == 0.0
    empty = evaluation.evaluate(truth={}, predicted={})
    assert (empty["tasks"], empty["coverage"], empty["controls"]) == (0, None, {})
    nothing_shared = evaluation.compare(truth=truth, predicted_a={1: [choice("Positive")]}, predicted_b={})
    assert (nothing_shared["tasks"], nothing_shared["only_a"], nothing_shared["only_b"]) == (0, 1, 0)


def test_second_call_is_served_from_the_cache_and_changes_recompute(project, monkeypatch):
    calls = []
    real = evaluation.accuracy_by_control
    monkeypatch.setattr(evaluation, "accuracy_by_control", lambda *a, **k: calls.append(1) or real(*a, **k))

    first = evaluation.project_accuracy(project, VERSION_A)
    assert evaluation.project_accuracy(project, VERSION_A) == first
    assert len(calls) == 1

    # A ground-truth change (t4 now Neutral) comes with a new revision: recomputed.
    Annotation.objects.filter(ls_annotation_id=104).update(result=[choice("Neutral"), stars(3)])
    LabelingProject.objects.filter(pk=project.pk).update(ground_truth_revision=F("ground_truth_revision") + 1)
    second = evaluation.project_accuracy(project, VERSION_A)
    assert len(calls) == 2
    assert second["ground_truth_revision"] == first["ground_truth_revision"] + 1
    assert second["controls"]["sentiment"]["confusion_matrix"]["no_prediction"] == [0, 0, 1]

    # A new prediction of the version is seen at once too (t4 now predicted, right).
    log(project, 4, [choice("Neutral"), stars(3)], minutes=5)
    third = evaluation.project_accuracy(project, VERSION_A)
    assert len(calls) == 3
    assert third["controls"]["sentiment"]["accuracy"] == pytest.approx(4 / 5)
    assert evaluation.project_accuracy(project, VERSION_A) == third
    assert len(calls) == 3


def test_project_without_ground_truth_or_predictions(db):
    cache.clear()
    project = make_project(ls_id=8)
    figures = evaluation.project_accuracy(project)
    assert figures["model_version"] == project.model_version
    assert (figures["tasks"], figures["predicted"], figures["coverage"]) == (0, 0, None)
    assert figures["controls"]["sentiment"]["accuracy"] is None


def _finish(batch, answers):
    """Completes the batch with an output file holding `answers` {task id: generated text}."""
    lines = [
        json.dumps(
            {
                "id": f"req-{task_id}",
                "custom_id": f"task-{task_id}",
                "response": {
                    "status_code": 200,
                    "request_id": f"req-{task_id}",
                    "body": {
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}]
                    },
                },
                "error": None,
            }
        )
        for task_id, text in answers.items()
    ]
    output = jobs_services.file_write_lines(
        owner_id=batch.owner_id, purpose=File.Purpose.BATCH_OUTPUT, filename="out.jsonl", lines=lines
    )
    output.save()
    Batch.objects.filter(pk=batch.pk).update(
        status=Batch.Status.COMPLETED, output_file=output, completed_at=timezone.now(), in_progress_at=batch.created_at
    )
    batch.refresh_from_db()
    return batch


def test_another_model_over_the_ground_truth_tasks_then_compared(project):
    other = RegisteredModel.objects.create(name="other-llama", path="/o")
    batch, version, asked = evaluation.ground_truth_predict_start(project=project, model=other)
    assert version == evaluation.version_for(project, other)
    assert version.startswith("other-llama@") and version != project.model_version
    assert asked == 5
    assert batch.metadata == {
        "labelstudio_project": project.ls_project,
        "labelstudio_model_version": version,
        "labelstudio_store": "local",
    }
    with jobs_services.file_open(batch.input_file) as handle:
        lines = [json.loads(line) for line in handle]
    assert [line["custom_id"] for line in lines] == [f"task-{n}" for n in range(1, 6)]
    assert {line["body"]["model"] for line in lines} == {"other-llama"}
    assert evaluation.ground_truth_batches(project) == [batch]

    with pytest.raises(evaluation.EvaluationError, match="still validating"):
        evaluation.ground_truth_predict_store(batch=batch)
    answer = '{{"sentiment": "{}", "stars": {}, "comment": "ok"}}'
    batch = _finish(
        batch,
        {
            1: answer.format("Positive", 4),
            2: answer.format("Negative", 2),
            3: answer.format("Positive", 5),
            4: answer.format("Positive", 1),
            5: "not json",
        },
    )
    assert evaluation.ground_truth_predict_store(batch=batch) == 5
    assert evaluation.ground_truth_predict_store(batch=batch) == 0  # nothing stored twice
    assert PredictionLog.objects.filter(model_version=version).exclude(error="").count() == 1  # t5

    figures = evaluation.project_accuracy(project, version)
    assert (figures["tasks"], figures["predicted"]) == (5, 4)
    assert figures["controls"]["sentiment"]["accuracy"] == pytest.approx(3 / 5)  # t1, t2, t4
    assert figures["controls"]["stars"]["mae"] == pytest.approx((0 + 0 + 0 + 2) / 4)

    result = evaluation.project_comparison(project, VERSION_A, version)
    assert (result["tasks"], result["only_a"], result["only_b"]) == (3, 1, 1)  # t1-t3; t5 A only, t4 new only
    assert result["outcomes"]["sentiment"] == {
        "both_correct": 1,  # t1
        "only_a_correct": 1,  # t3
        "only_b_correct": 1,  # t2
        "both_wrong": 0,
    }

    # Asked again: every ground-truth task but the failed one already has an answer.
    _, _, asked_again = evaluation.ground_truth_predict_start(project=project, model=other)
    assert asked_again == 1


def test_a_pooling_or_inactive_model_cannot_answer(project):
    pooling = RegisteredModel.objects.create(name="minilm", path="/e", runner=RegisteredModel.Runner.POOLING)
    with pytest.raises(evaluation.EvaluationError, match="not an active generation model"):
        evaluation.ground_truth_predict_start(project=project, model=pooling)


def test_a_ground_truth_batch_is_stored_when_it_finishes(project, monkeypatch, django_capture_on_commit_callbacks):
    other = RegisteredModel.objects.create(name="other-llama", path="/o")
    batch, _, _ = evaluation.ground_truth_predict_start(project=project, model=other)
    assert evaluation.is_ground_truth_run(batch)
    queued = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *args, **kwargs: queued.append((func, *args)))
    Batch.objects.filter(pk=batch.pk).update(status="in_progress", total_requests=1)
    with django_capture_on_commit_callbacks(execute=True):
        jobs_services.batch_finalize(batch_id=batch.pk, final_status="completed", holder="test:1")
    assert queued == [("labeling.evaluation.store_task", batch.id)]
    _finish(Batch.objects.get(pk=batch.pk), {1: '{"sentiment": "Positive", "stars": 4, "comment": ""}'})
    assert evaluation.store_task(batch.id) == "1 predictions stored"
    assert evaluation.store_task(batch.id) == "0 predictions stored"
    assert evaluation.store_task("batch_gone") == "batch deleted"
