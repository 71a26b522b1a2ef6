"""The fine-tuning export: OpenAI chat lines from ground truth and accepted
annotations, byte-for-byte deterministic, a fine-tune File downloadable through
the Files API, and the runs that START_TRAINING, the threshold or an admin start."""

import json

import pytest

from jobs.models import File
from jobs.services import api_key_create
from labeling import predictions as P
from labeling import store, training
from labeling.bulk import service_user
from labeling.models import LabelingProject, TrainingRun

from .deliveries import annotation_event, deliver

pytestmark = pytest.mark.django_db

NER_CONFIG = (
    '<View><Text name="text" value="$text"/>'
    '<Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>'
    '<Choices name="topic" toName="text"><Choice value="news"/><Choice value="sport"/></Choices></View>'
)


def span(start, end, text, label):
    value = {"start": start, "end": end, "text": text, "labels": [label]}
    return {"from_name": "ner", "to_name": "text", "type": "labels", "value": value}


def topic(choice):
    return {"from_name": "topic", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}


@pytest.fixture(autouse=True)
def no_queue(monkeypatch):
    monkeypatch.setattr(training, "_enqueue", lambda run_id, owner_id=None: None)


@pytest.fixture
def project():
    """The recorded sentiment project: annotations 51 (task 1, Positive, ground
    truth), 52 and 53 (task 2, Negative and Neutral, none ground truth), 54 (task
    3, cancelled) and 55 (task 3, a label not in the config)."""
    deliver("webhook_TASKS_CREATED.json")
    deliver(annotation_event(51, 1, "Positive", "2026-11-27T21:00:00Z", ground_truth=True))
    deliver(annotation_event(52, 2, "Negative", "2026-11-27T21:00:01Z"))
    deliver(annotation_event(53, 2, "Neutral", "2026-11-27T21:00:02Z"))
    deliver(annotation_event(54, 3, "Neutral", "2026-11-27T21:00:03Z", was_cancelled=True))
    deliver(annotation_event(55, 3, "Furious", "2026-11-27T21:00:04Z"))
    return LabelingProject.objects.get()


def content(run):
    from jobs.services import file_open

    with file_open(run.file) as handle:
        return handle.read()


def run_export(project, trigger=TrainingRun.Trigger.MANUAL):
    run = training.run_start(project=project, trigger=trigger)
    return training.export(run_id=run.pk)


def test_one_chat_line_per_accepted_annotation(project):
    run = run_export(project)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    lines = [json.loads(line) for line in content(run).decode().splitlines()]
    assert [line["messages"][-1]["content"] for line in lines] == ["Positive", "Negative", "Neutral"]
    task = {"id": 1, "data": {"text": "I love this product, it works great."}}
    asked = P.build_requests(project, [task])[0]["messages"]
    assert lines[0]["messages"] == [*asked, {"role": "assistant", "content": "Positive"}]
    assert all([m["role"] for m in line["messages"]] == ["user", "assistant"] for line in lines)
    assert (run.examples, run.ground_truth_count, run.skipped) == (3, 1, 0)
    assert run.file.purpose == File.Purpose.FINE_TUNE and run.file.owner == service_user()
    assert run.file.line_count == 3 and run.finished_at


def test_a_task_with_ground_truth_contributes_only_its_ground_truth(project):
    store.ground_truth_set(project=project, value=True, annotation_ids=[53])
    lines = content(run_export(project)).decode().splitlines()
    assert [json.loads(line)["messages"][-1]["content"] for line in lines] == ["Positive", "Neutral"]


def test_the_same_annotations_give_the_same_bytes(project):
    first, second = run_export(project), run_export(project)
    assert first.file_id != second.file_id
    assert content(first) == content(second)
    deliver(annotation_event(52, 2, "Positive", "2026-11-27T23:00:00Z"))
    assert content(run_export(project)) != content(first)


def test_multi_control_and_ner_answers_are_the_guided_json(project):
    ner = LabelingProject.objects.create(ls_project="7.1700000000", ls_project_id=7, label_config=NER_CONFIG)
    text = "Ada Lovelace joined the Royal Society."
    task = store.task_upsert(project=ner, record={"id": 1, "data": {"text": text}})
    result = [span(24, 37, "Royal Society", "ORG"), span(0, 12, "Ada Lovelace", "PER"), topic("news")]
    record = {"id": 1, "result": result, "updated_at": "2026-11-27T21:00:00Z"}
    annotation, _ = store.annotation_upsert(project=ner, record=record, task=task, config=ner.parsed_config())
    assert annotation.valid, annotation.invalid_reason
    line = json.loads(content(run_export(ner)))
    answer = json.loads(line["messages"][-1]["content"])
    assert set(answer) == {"ner", "topic"} and answer["topic"] == "news"
    assert sorted(answer["ner"], key=lambda s: s["text"]) == [
        {"text": "Ada Lovelace", "label": "PER"},
        {"text": "Royal Society", "label": "ORG"},
    ]


def test_ner_offsets_that_do_not_match_the_text_make_the_annotation_invalid():
    ner = LabelingProject.objects.create(ls_project="7.1700000000", ls_project_id=7, label_config=NER_CONFIG)
    task = store.task_upsert(project=ner, record={"id": 1, "data": {"text": "Ada Lovelace 👩 joined IBM."}})
    ok, wrong = [span(23, 26, "IBM", "ORG")], [span(0, 3, "IBM", "ORG")]
    config = ner.parsed_config()
    # Label Studio counts in UTF-16 code units: the emoji is two of them.
    first, _ = store.annotation_upsert(project=ner, record={"id": 1, "result": ok}, task=task, config=config)
    second, _ = store.annotation_upsert(project=ner, record={"id": 2, "result": wrong}, task=task, config=config)
    assert first.valid, first.invalid_reason
    assert not second.valid and "'Ada'" in second.invalid_reason


def test_nothing_to_export_fails_the_run_with_the_reason():
    deliver("webhook_TASKS_CREATED.json")
    run = run_export(LabelingProject.objects.get())
    assert run.status == TrainingRun.Status.FAILED and "No annotation to export" in run.error and run.file is None


def test_the_threshold_starts_a_run_after_n_new_ground_truth_annotations(project):
    project.train_after_ground_truth = 2
    project.save(update_fields=["train_after_ground_truth"])
    deliver(annotation_event(52, 2, "Negative", "2026-11-27T22:00:00Z", ground_truth=True))
    # 51 (ground truth before any run) and 52 make two: the run starts.
    runs = list(TrainingRun.objects.all())
    assert len(runs) == 1 and runs[0].trigger == TrainingRun.Trigger.THRESHOLD
    deliver(annotation_event(56, 1, "Positive", "2026-11-27T22:00:01Z", ground_truth=True))
    assert TrainingRun.objects.count() == 1  # one new since the run
    deliver(annotation_event(57, 3, "Neutral", "2026-11-27T22:00:02Z", ground_truth=True))
    assert TrainingRun.objects.count() == 2


def test_the_threshold_is_off_by_default(project):
    deliver(annotation_event(52, 2, "Negative", "2026-11-27T22:00:00Z", ground_truth=True))
    assert TrainingRun.objects.count() == 0


def test_the_file_downloads_through_the_files_api(client, project, django_user_model):
    admin = django_user_model.objects.create(username="admin", is_staff=True)
    run = training.run_start(project=project, trigger=TrainingRun.Trigger.MANUAL, owner=admin)
    run = training.export(run_id=run.pk, owner_id=admin.pk)
    assert run.file.owner == admin
    key = api_key_create(owner=admin, name="admin")[1]
    response = client.get(f"/v1/files/{run.file_id}/content", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == content(run)
    listed = client.get("/v1/files?purpose=fine-tune", HTTP_AUTHORIZATION=f"Bearer {key}").json()
    assert [f["id"] for f in listed["data"]] == [run.file_id] and listed["data"][0]["purpose"] == "fine-tune"


def test_export_task_runs_once(project):
    run = training.run_start(project=project, trigger=TrainingRun.Trigger.MANUAL)
    from labeling.tasks import export_training

    assert export_training(run.pk).startswith("succeeded")
    file_id = TrainingRun.objects.get().file_id
    training.export(run_id=run.pk)  # a second delivery of the task
    assert TrainingRun.objects.get().file_id == file_id and File.objects.count() == 1
