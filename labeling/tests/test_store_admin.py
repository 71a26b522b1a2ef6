"""The admin of the Label Studio loop: events (re-process), annotations (ground
truth actions, filters), tasks, training runs, and the project's sync button and
training action."""

import pytest

from labeling import store_admin, sync, training
from labeling.models import Annotation, LabelingProject, TrainingRun, WebhookEvent

from .deliveries import annotation_event, deliver
from .test_sync import FakeServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def project():
    deliver("webhook_TASKS_CREATED.json")
    deliver(annotation_event(61, 1, "Positive", "2026-11-27T21:00:00Z"))
    deliver(annotation_event(62, 2, "Furious", "2026-11-27T21:00:01Z"))
    deliver(annotation_event(63, 3, "Neutral", "2026-11-27T21:00:02Z", was_cancelled=True))
    return LabelingProject.objects.get()


def action(admin_client, model, name, ids):
    return admin_client.post(
        f"/admin/labeling/{model}/", {"action": name, "_selected_action": [str(i) for i in ids]}, follow=True
    )


def test_every_page_opens(admin_client, project):
    run = TrainingRun.objects.create(project=project, trigger=TrainingRun.Trigger.MANUAL)
    annotation = Annotation.objects.get(ls_annotation_id=62)
    pages = [
        "/admin/labeling/webhookevent/",
        f"/admin/labeling/webhookevent/{WebhookEvent.objects.first().pk}/change/",
        "/admin/labeling/labelingtask/",
        f"/admin/labeling/labelingtask/{annotation.task_id}/change/",
        "/admin/labeling/annotation/?valid__exact=0",
        f"/admin/labeling/annotation/{annotation.pk}/change/",
        "/admin/labeling/labelstudioprediction/",
        "/admin/labeling/trainingrun/",
        f"/admin/labeling/trainingrun/{run.pk}/change/",
        f"/admin/labeling/labelingproject/{project.pk}/change/",
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
    invalid = admin_client.get("/admin/labeling/annotation/?valid__exact=0").content.decode()
    assert "62" in invalid and "Furious" in invalid
    detail = admin_client.get(f"/admin/labeling/annotation/{annotation.pk}/change/").content.decode()
    assert "is not in the config" in detail
    project_page = admin_client.get(f"/admin/labeling/labelingproject/{project.pk}/change/").content.decode()
    assert "3 tasks" in project_page and "1 invalid" in project_page and 'id="sync-button"' in project_page


def test_mark_and_unmark_ground_truth_actions(admin_client, project):
    ids = list(Annotation.objects.filter(ls_annotation_id__in=[61, 62]).values_list("pk", flat=True))
    response = action(admin_client, "annotation", "mark_ground_truth", ids)
    assert "2 annotation(s) marked as ground truth" in response.content.decode()
    assert set(Annotation.objects.filter(ground_truth=True).values_list("ls_annotation_id", flat=True)) == {61, 62}
    action(admin_client, "annotation", "unmark_ground_truth", ids[:1])
    assert list(Annotation.objects.filter(ground_truth=True).values_list("ls_annotation_id", flat=True)) == [62]
    listed = admin_client.get("/admin/labeling/annotation/?ground_truth__exact=1").content.decode()
    assert "Negative" not in listed and "Furious" in listed


def test_a_cancelled_annotation_is_refused_with_a_message(admin_client, project):
    cancelled = Annotation.objects.get(ls_annotation_id=63)
    response = action(admin_client, "annotation", "mark_ground_truth", [cancelled.pk])
    assert "cannot be ground truth" in response.content.decode()
    assert not Annotation.objects.filter(ground_truth=True).exists()


def test_process_again_action(admin_client, project):
    failed = deliver({"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": "nope"})
    assert failed.status == WebhookEvent.Status.FAILED
    listed = admin_client.get("/admin/labeling/webhookevent/?status__exact=failed").content.decode()
    assert "not a list of objects" in listed
    response = action(admin_client, "webhookevent", "process_again", [failed.pk])
    assert "1 failed" in response.content.decode()
    failed.refresh_from_db()
    assert failed.attempts == 2


def test_sync_button_and_action(admin_client, project, monkeypatch):
    server = FakeServer()
    monkeypatch.setattr(sync, "label_studio_for", lambda p: server.client())
    response = admin_client.post(f"/admin/labeling/labelingproject/{project.pk}/sync/", follow=True)
    assert response.status_code == 200 and "3 tasks" in response.content.decode()
    assert len(server.requests) == 2  # the project and one page of tasks
    response = action(admin_client, "labelingproject", "sync_action", [project.pk])
    assert "3 tasks" in response.content.decode()
    assert admin_client.get(f"/admin/labeling/labelingproject/{project.pk}/sync/").status_code == 403


def test_training_action_starts_a_run_owned_by_the_admin(
    admin_client, admin_user, project, monkeypatch, django_capture_on_commit_callbacks
):
    queued = []
    monkeypatch.setattr(training, "_enqueue", lambda run_id, owner_id=None: queued.append((run_id, owner_id)))
    with django_capture_on_commit_callbacks(execute=True):
        response = action(admin_client, "labelingproject", "training_action", [project.pk])
    run = TrainingRun.objects.get()
    assert f"training run {run.pk}" in response.content.decode()
    assert queued == [(run.pk, admin_user.pk)] and run.trigger == TrainingRun.Trigger.MANUAL
    training.export(run_id=run.pk, owner_id=admin_user.pk)
    page = admin_client.get("/admin/labeling/trainingrun/").content.decode()
    assert "/admin/jobs/file/" in page and "labelstudio-1-run" in page


def test_loop_summary_of_an_unsaved_project():
    assert store_admin.loop_summary(LabelingProject()) == "-"
