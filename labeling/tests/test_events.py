"""Label Studio's recorded webhook events processed into the annotation store:
stored, normalised, idempotent on replay, safe out of order."""

import pytest

from labeling import events, training
from labeling.models import Annotation, LabelingProject, LabelingTask, TrainingRun, WebhookEvent

from .deliveries import EVENTS, PROJECT_KEY, annotation_event, body, deliver, raw

pytestmark = pytest.mark.django_db

TEXTS = {1: "I love this product, it works great.", 2: "Terrible service, never again.", 3: "It arrived on Tuesday."}


def state():
    """Everything the store holds, to compare before and after a replay."""
    tasks = sorted(LabelingTask.objects.values_list("ls_task_id", "data", "deleted_at"))
    annotations = sorted(
        Annotation.objects.values_list(
            "ls_annotation_id", "task__ls_task_id", "result", "ground_truth", "valid", "was_cancelled", "deleted_at"
        )
    )
    project = LabelingProject.objects.values_list("title", "label_config", "model_version", "ground_truth_revision")
    return tasks, annotations, list(project)


def test_every_recorded_event_is_processed_in_order():
    for name in EVENTS:
        event = deliver(name)
        assert event.status == WebhookEvent.Status.PROCESSED, (name, event.error)
        assert event.ls_project_id == 1 and event.attempts == 1 and event.processed_at
    project = LabelingProject.objects.get()
    assert project.ls_project == PROJECT_KEY and project.ls_project_id == 1
    assert project.title == "Capture CLS renamed"
    tasks = {t.ls_task_id: t for t in LabelingTask.objects.all()}
    assert {i: tasks[i].data["text"] for i in TEXTS} == TEXTS
    assert tasks[4].deleted_at is not None  # TASKS_DELETED
    assert all(tasks[i].deleted_at is None for i in TEXTS)
    updated = Annotation.objects.get(ls_annotation_id=1)
    assert updated.result[0]["value"]["choices"] == ["Neutral"]  # the update applied...
    assert updated.deleted_at is not None  # ...then ANNOTATIONS_DELETED
    bulk = Annotation.objects.get(ls_annotation_id=3)
    assert bulk.task.ls_task_id == 1 and bulk.result[0]["value"]["choices"] == ["Positive"]
    assert bulk.valid and bulk.deleted_at is None and not bulk.ground_truth


def test_the_body_is_stored_as_received():
    payload = raw(body("webhook_TASKS_CREATED.json"))
    event = events.event_receive(body=payload, source=WebhookEvent.Source.WEBHOOK)
    event.refresh_from_db()
    assert bytes(event.body) == payload
    assert event.action == "TASKS_CREATED" and event.status == WebhookEvent.Status.RECEIVED


def test_replaying_every_event_changes_nothing():
    for name in EVENTS:
        deliver(name)
    before = state()
    for name in EVENTS:
        assert deliver(name).status == WebhookEvent.Status.PROCESSED
    assert state() == before
    assert WebhookEvent.objects.count() == 2 * len(EVENTS)


def test_processing_one_event_twice_is_a_no_op():
    event = deliver("webhook_TASKS_CREATED.json")
    assert events.event_process(event_id=event.pk) == WebhookEvent.Status.PROCESSED
    event.refresh_from_db()
    assert event.attempts == 1


def test_an_older_update_arriving_after_a_newer_one_changes_nothing():
    deliver("webhook_TASKS_CREATED.json")
    deliver(annotation_event(7, 1, "Positive", "2026-11-27T21:00:02Z", action="ANNOTATION_CREATED"))
    deliver(annotation_event(7, 1, "Negative", "2026-11-27T21:00:05Z"))
    late = deliver(annotation_event(7, 1, "Neutral", "2026-11-27T21:00:03Z"))
    assert late.status == WebhookEvent.Status.PROCESSED
    annotation = Annotation.objects.get(ls_annotation_id=7)
    assert annotation.result[0]["value"]["choices"] == ["Negative"]
    assert annotation.ls_updated_at.isoformat() == "2026-11-27T21:00:05+00:00"


def test_an_update_before_its_create_keeps_the_newer():
    deliver("webhook_TASKS_CREATED.json")
    deliver(annotation_event(8, 2, "Neutral", "2026-11-27T21:00:09Z"))
    deliver(annotation_event(8, 2, "Positive", "2026-11-27T21:00:01Z", action="ANNOTATION_CREATED"))
    assert Annotation.objects.get(ls_annotation_id=8).result[0]["value"]["choices"] == ["Neutral"]


def test_an_annotation_with_a_label_not_in_the_config_is_flagged():
    deliver("webhook_TASKS_CREATED.json")
    deliver(annotation_event(9, 2, "Furious", "2026-11-27T21:00:00Z"))
    annotation = Annotation.objects.get(ls_annotation_id=9)
    assert not annotation.valid
    assert "'Furious' is not in the config" in annotation.invalid_reason


def test_a_control_or_object_the_config_lacks_is_flagged():
    deliver("webhook_TASKS_CREATED.json")
    payload = annotation_event(10, 2, "Positive", "2026-11-27T21:00:00Z")
    payload["annotation"]["result"][0]["from_name"] = "mood"
    deliver(payload)
    assert "no control named 'mood'" in Annotation.objects.get(ls_annotation_id=10).invalid_reason


def test_cancelled_annotations_are_kept_apart_and_never_ground_truth():
    deliver("webhook_TASKS_CREATED.json")
    deliver(annotation_event(11, 3, "Neutral", "2026-11-27T21:00:00Z", was_cancelled=True, ground_truth=True))
    annotation = Annotation.objects.get(ls_annotation_id=11)
    assert annotation.was_cancelled and annotation.ls_ground_truth and not annotation.ground_truth


def test_label_studios_ground_truth_flag_is_followed_and_bumps_the_revision():
    deliver("webhook_TASKS_CREATED.json")
    deliver(annotation_event(12, 1, "Positive", "2026-11-27T21:00:00Z", action="ANNOTATION_CREATED"))
    project = LabelingProject.objects.get()
    assert project.ground_truth_revision == 0
    deliver(annotation_event(12, 1, "Positive", "2026-11-27T21:00:01Z", ground_truth=True))
    project.refresh_from_db()
    annotation = Annotation.objects.get(ls_annotation_id=12)
    assert annotation.ground_truth and annotation.ground_truth_at and project.ground_truth_revision == 1
    deliver(annotation_event(12, 1, "Negative", "2026-11-27T21:00:02Z", ground_truth=True))
    project.refresh_from_db()
    assert project.ground_truth_revision == 2  # the ground truth's answer changed
    deliver(annotation_event(12, 1, "Negative", "2026-11-27T21:00:03Z", ground_truth=False))
    project.refresh_from_db()
    assert not Annotation.objects.get(ls_annotation_id=12).ground_truth and project.ground_truth_revision == 3


def test_deleting_a_task_deletes_its_annotations_too():
    deliver("webhook_TASKS_CREATED.json")
    deliver(annotation_event(13, 3, "Neutral", "2026-11-27T21:00:00Z", ground_truth=True))
    payload = body("webhook_TASKS_DELETED.json")
    payload["tasks"] = [{"id": 3}]
    deliver(payload)
    assert LabelingTask.objects.get(ls_task_id=3).deleted_at is not None
    assert Annotation.objects.get(ls_annotation_id=13).deleted_at is not None
    assert LabelingProject.objects.get().ground_truth_revision == 2


def test_a_task_deleted_before_it_was_seen_stays_deleted():
    deliver("webhook_TASKS_DELETED.json")  # task 4, never created here
    deliver("webhook_TASKS_CREATED.json")
    payload = body("webhook_TASKS_CREATED.json")
    payload["tasks"] = [{**payload["tasks"][0], "id": 4}]
    deliver(payload)
    assert LabelingTask.objects.get(ls_task_id=4).deleted_at is not None


def test_project_updated_refreshes_config_title_and_model_version():
    deliver("webhook_TASKS_CREATED.json")
    project = LabelingProject.objects.get()
    before = project.model_version
    payload = body("webhook_PROJECT_UPDATED.json")
    payload["project"]["label_config"] = payload["project"]["label_config"].replace(
        '<Choice value="Neutral"/>', '<Choice value="Neutral"/><Choice value="Mixed"/>'
    )
    deliver(payload)
    project.refresh_from_db()
    assert "Mixed" in project.label_config and project.title == "Capture CLS renamed"
    assert project.model_version != before


def older_project_updated():
    """A PROJECT_UPDATED carrying the project as the recorded events before the
    rename saw it (Label Studio's updated_at 20:37:51.799, title "Capture CLS")."""
    return {"action": "PROJECT_UPDATED", "project": body("webhook_TASKS_CREATED.json")["project"]}


def test_an_older_project_updated_arriving_late_changes_nothing():
    newer = body("webhook_PROJECT_UPDATED.json")  # updated_at 20:37:52.710
    newer["project"]["label_config"] = newer["project"]["label_config"].replace(
        '<Choice value="Neutral"/>', '<Choice value="Neutral"/><Choice value="Mixed"/>'
    )
    deliver(newer)
    before = state()
    event = deliver(older_project_updated())
    assert event.status == WebhookEvent.Status.PROCESSED
    assert state() == before
    project = LabelingProject.objects.get()
    assert project.title == "Capture CLS renamed" and "Mixed" in project.label_config
    assert project.ls_updated_at.isoformat() == "2026-11-27T20:37:52.710005+00:00"


def test_project_updates_in_order_each_apply():
    deliver(older_project_updated())
    assert LabelingProject.objects.get().title == "Capture CLS"
    deliver("webhook_PROJECT_UPDATED.json")
    assert LabelingProject.objects.get().title == "Capture CLS renamed"


def test_a_missed_project_updated_is_caught_up_by_the_next_event():
    """Label Studio never retries: the rename's PROJECT_UPDATED is lost, and the
    next recorded event (ANNOTATIONS_CREATED, sent after the rename) carries the
    project as it is now."""
    deliver("webhook_TASKS_CREATED.json")
    assert LabelingProject.objects.get().title == "Capture CLS"
    deliver("webhook_ANNOTATIONS_CREATED.json")
    project = LabelingProject.objects.get()
    assert project.title == "Capture CLS renamed"
    deliver("webhook_ANNOTATION_UPDATED.json")  # recorded before the rename, delivered after it
    assert LabelingProject.objects.get().title == "Capture CLS renamed"


def test_a_broken_config_in_another_events_project_record_is_left_out():
    deliver("webhook_TASKS_CREATED.json")
    payload = body("webhook_ANNOTATIONS_CREATED.json")
    payload["project"]["label_config"] = "<View><Text"
    event = deliver(payload)
    assert event.status == WebhookEvent.Status.PROCESSED
    project = LabelingProject.objects.get()
    assert "<Choices" in project.label_config and project.title == "Capture CLS renamed"


def test_a_broken_config_fails_the_event_and_keeps_the_old_one():
    deliver("webhook_TASKS_CREATED.json")
    payload = body("webhook_PROJECT_UPDATED.json")
    payload["project"]["label_config"] = "<View><Text"
    event = deliver(payload)
    assert event.status == WebhookEvent.Status.FAILED and "well-formed" in event.error
    project = LabelingProject.objects.get()
    assert "<Choices" in project.label_config and project.title == "Capture CLS"  # rolled back as a whole


def test_unknown_actions_are_stored_and_ignored():
    event = deliver({"action": "LABEL_LINK_CREATED", "project": {"id": 1}})
    assert event.status == WebhookEvent.Status.IGNORED and "LABEL_LINK_CREATED" in event.error
    assert LabelingProject.objects.count() == 0


def test_a_failure_is_recorded_and_can_be_processed_again():
    payload = annotation_event(14, 2, "Positive", "2026-11-27T21:00:00Z")
    payload.pop("task")
    event = deliver(payload)  # the task is not known yet
    assert event.status == WebhookEvent.Status.FAILED and "task 2" in event.error
    assert Annotation.objects.count() == 0
    deliver("webhook_TASKS_CREATED.json")
    assert events.events_process_again(events=[event]) == {WebhookEvent.Status.PROCESSED: 1}
    event.refresh_from_db()
    assert event.status == WebhookEvent.Status.PROCESSED and event.attempts == 2 and event.error == ""
    assert Annotation.objects.get(ls_annotation_id=14).task.ls_task_id == 2


def test_an_event_for_an_unknown_project_without_its_record_fails():
    event = deliver({"action": "TASKS_DELETED", "project": 5, "tasks": [{"id": 1}]})
    assert event.status == WebhookEvent.Status.FAILED and "project 5" in event.error


def test_project_deleted_flags_the_project():
    deliver("webhook_TASKS_CREATED.json")
    payload = body("webhook_PROJECT_UPDATED.json")
    payload["action"] = "PROJECT_DELETED"
    assert deliver(payload).status == WebhookEvent.Status.PROCESSED
    assert LabelingProject.objects.get().ls_deleted_at is not None


def test_project_created_creates_the_project():
    payload = body("webhook_PROJECT_UPDATED.json")
    payload["action"] = "PROJECT_CREATED"
    deliver(payload)
    assert LabelingProject.objects.get().ls_project == PROJECT_KEY


def test_the_backends_events_go_to_the_same_store(monkeypatch):
    event = deliver("ml_webhook_ANNOTATION_CREATED.json", source=WebhookEvent.Source.BACKEND)
    assert event.status == WebhookEvent.Status.PROCESSED and event.source == WebhookEvent.Source.BACKEND
    assert Annotation.objects.get().task.data["text"] == TEXTS[2]


def test_start_training_starts_a_training_run(monkeypatch, django_capture_on_commit_callbacks):
    queued = []
    monkeypatch.setattr(training, "_enqueue", lambda run_id, owner_id=None: queued.append(run_id))
    monkeypatch.setattr(events, "_enqueue", lambda event_id: None)
    deliver("webhook_TASKS_CREATED.json")
    with django_capture_on_commit_callbacks(execute=True):
        event = deliver("ml_webhook_START_TRAINING.json", source=WebhookEvent.Source.BACKEND)
    run = TrainingRun.objects.get()
    assert event.status == WebhookEvent.Status.PROCESSED
    assert run.trigger == TrainingRun.Trigger.START_TRAINING and run.event == event and queued == [run.pk]
