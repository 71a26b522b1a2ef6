"""Sync: a project pulled through the Label Studio client (against a stubbed
transport answering with Label Studio 1.23.2's shapes) into the same store as
the webhooks, idempotently, with deletions."""

import copy

import httpx
import pytest
from django.core.management import call_command

from labeling import sync
from labeling.client import LabelStudio
from labeling.models import Annotation, LabelingProject, LabelingTask, LabelStudioPrediction, WebhookEvent

from .deliveries import PROJECT_KEY, annotation_event, body, deliver

pytestmark = pytest.mark.django_db


def annotation(annotation_id, task_id, choice, updated_at, **fields):
    record = annotation_event(annotation_id, task_id, choice, updated_at)["annotation"]
    record["completed_by"] = {"id": 1, "email": "a@b.c"}  # the data manager expands the user
    record.update(fields)
    return record


def prediction(prediction_id, task_id, choice, model_version="tiny@1", score=0.9):
    return {
        "id": prediction_id,
        "task": task_id,
        "result": [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}],
        "score": score,
        "model_version": model_version,
        "created_at": "2026-11-27T20:37:52Z",
        "updated_at": "2026-11-27T20:37:52Z",
    }


class FakeServer:
    """Label Studio's /api/projects/1/ and /api/tasks/ (fields=all, paged) from a project record and tasks."""

    def __init__(self):
        self.project = copy.deepcopy(body("webhook_PROJECT_UPDATED.json")["project"])
        self.tasks = []
        for record in body("webhook_TASKS_CREATED.json")["tasks"]:
            self.tasks.append({**record, "annotations": [], "predictions": []})
        self.requests = []

    def task(self, task_id):
        return next(t for t in self.tasks if t["id"] == task_id)

    def __call__(self, request):
        self.requests.append(request)
        if request.url.path == "/api/projects/1/":
            return httpx.Response(200, json=self.project)
        if request.url.path == "/api/tasks/":
            assert request.url.params["fields"] == "all" and request.url.params["project"] == "1"
            size, page = int(request.url.params["page_size"]), int(request.url.params["page"])
            chunk = self.tasks[(page - 1) * size : page * size]
            return httpx.Response(200, json={"tasks": chunk, "total": len(self.tasks)})
        return httpx.Response(404, json={"detail": "Not found."})

    def client(self):
        return LabelStudio("http://ls.test", "token", transport=httpx.MockTransport(self))


@pytest.fixture
def server():
    server = FakeServer()
    server.task(1)["annotations"] = [annotation(31, 1, "Positive", "2026-11-27T21:00:00Z", ground_truth=True)]
    server.task(1)["predictions"] = [prediction(41, 1, "Positive"), prediction(42, 1, "Negative", "other@2")]
    server.task(2)["annotations"] = [annotation(32, 2, "Negative", "2026-11-27T21:00:00Z")]
    server.task(3)["annotations"] = [annotation(33, 3, "Neutral", "2026-11-27T21:00:00Z", was_cancelled=True)]
    return server


@pytest.fixture
def project():
    deliver("webhook_PROJECT_UPDATED.json")  # creates the project from the event's record
    return LabelingProject.objects.get()


def stored():
    return (
        sorted(LabelingTask.objects.values_list("ls_task_id", "data", "deleted_at")),
        sorted(Annotation.objects.values_list("ls_annotation_id", "result", "ground_truth", "deleted_at")),
        sorted(LabelStudioPrediction.objects.values_list("ls_prediction_id", "result", "model_version", "score")),
    )


def test_sync_pulls_tasks_annotations_and_predictions(server, project):
    synced = sync.sync_project(project=project, client=server.client())
    assert (synced.tasks, synced.annotations, synced.annotations_applied, synced.predictions) == (3, 3, 3, 2)
    assert sorted(LabelingTask.objects.values_list("ls_task_id", flat=True)) == [1, 2, 3]
    truth = Annotation.objects.get(ls_annotation_id=31)
    assert truth.ground_truth and truth.ls_ground_truth and truth.completed_by == 1 and truth.valid
    assert Annotation.objects.get(ls_annotation_id=33).was_cancelled
    assert LabelStudioPrediction.objects.get(ls_prediction_id=42).model_version == "other@2"
    project.refresh_from_db()
    assert project.ground_truth_revision == 1


def test_syncing_again_changes_nothing(server, project):
    sync.sync_project(project=project, client=server.client())
    before = stored()
    synced = sync.sync_project(project=project, client=server.client())
    assert synced.annotations_applied == 0 and synced.tasks_deleted == 0
    assert stored() == before


def test_sync_and_webhooks_share_the_store(server, project):
    deliver(annotation_event(31, 1, "Negative", "2026-11-27T22:00:00Z", ground_truth=True))  # newer than LS's copy
    sync.sync_project(project=project, client=server.client())
    assert Annotation.objects.get(ls_annotation_id=31).result[0]["value"]["choices"] == ["Negative"]
    assert Annotation.objects.count() == 3


def test_what_label_studio_no_longer_has_is_marked_deleted(server, project):
    sync.sync_project(project=project, client=server.client())
    server.tasks = [t for t in server.tasks if t["id"] != 2]
    server.task(1)["annotations"] = []
    server.task(1)["predictions"] = [prediction(41, 1, "Positive")]
    synced = sync.sync_project(project=project, client=server.client())
    assert synced.tasks_deleted == 1 and synced.annotations_deleted == 1
    assert LabelingTask.objects.get(ls_task_id=2).deleted_at is not None
    assert Annotation.objects.get(ls_annotation_id=32).deleted_at is not None  # with its task
    assert Annotation.objects.get(ls_annotation_id=31).deleted_at is not None
    assert list(LabelStudioPrediction.objects.values_list("ls_prediction_id", flat=True)) == [41]
    project.refresh_from_db()
    assert project.ground_truth_revision == 2


def test_sync_refreshes_the_config_and_title(server, project):
    before = project.model_version
    server.project["title"] = "Synced title"
    server.project["label_config"] = server.project["label_config"].replace(
        '<Choice value="Neutral"/>', '<Choice value="Neutral"/><Choice value="Mixed"/>'
    )
    synced = sync.sync_project(project=project, client=server.client())
    project.refresh_from_db()
    assert synced.config_changed and project.title == "Synced title" and project.model_version != before


def test_a_project_updated_older_than_the_sync_changes_nothing(server, project):
    server.project["title"] = "Synced title"
    server.project["updated_at"] = "2026-11-27T21:00:00.000000Z"
    sync.sync_project(project=project, client=server.client())
    late = body("webhook_PROJECT_UPDATED.json")  # updated_at 20:37:52
    late["project"]["title"] = "Late"
    deliver(late)
    project.refresh_from_db()
    assert project.title == "Synced title"


def test_sync_pages_through_many_tasks(project):
    server = FakeServer()
    template = server.tasks[0]
    server.tasks = [{**template, "id": i, "annotations": [], "predictions": []} for i in range(1, 251)]
    assert sync.sync_project(project=project, client=server.client()).tasks == 250
    assert LabelingTask.objects.filter(deleted_at=None).count() == 250


def test_an_unreachable_label_studio_is_a_clear_error(project):
    def refuse(request):
        raise httpx.ConnectError("connection refused")

    client = LabelStudio("http://ls.test", "token", transport=httpx.MockTransport(refuse))
    with pytest.raises(sync.SyncError, match="cannot reach"):
        sync.sync_project(project=project, client=client)


def test_without_url_and_token_sync_says_what_is_missing(project):
    with pytest.raises(sync.SyncError, match="no Label Studio URL and API token"):
        sync.sync_project(project=project)


def test_the_command_syncs_a_project(server, project, monkeypatch, capsys):
    monkeypatch.setattr(sync, "label_studio_for", lambda p: server.client())
    call_command("labelstudio", "sync", "1")
    out = capsys.readouterr().out
    assert "3 tasks, 3 annotations" in out
    assert Annotation.objects.count() == 3 and WebhookEvent.objects.count() == 1
    assert project.ls_project == PROJECT_KEY
