"""Ground truth: marked and unmarked through the API (and the store), Label
Studio's flag followed, listed per project."""

import json

import pytest

from jobs.services import api_key_create
from labeling import store
from labeling.models import Annotation, LabelingProject

from .deliveries import annotation_event, deliver

pytestmark = pytest.mark.django_db

URL = "/v1/labeling/projects/{}/ground-truth"


@pytest.fixture
def key(django_user_model):
    owner = django_user_model.objects.create(username="team")
    return api_key_create(owner=owner, name="team")[1]


@pytest.fixture
def project():
    """The recorded project with three tasks and annotations 21 (task 1), 22 and 23
    (task 2, 23 the later) and a cancelled 24 (task 3)."""
    deliver("webhook_TASKS_CREATED.json")
    deliver(annotation_event(21, 1, "Positive", "2026-11-27T21:00:00Z"))
    deliver(annotation_event(22, 2, "Negative", "2026-11-27T21:00:01Z"))
    deliver(annotation_event(23, 2, "Neutral", "2026-11-27T21:00:02Z"))
    deliver(annotation_event(24, 3, "Neutral", "2026-11-27T21:00:03Z", was_cancelled=True))
    return LabelingProject.objects.get()


def call(client, key, method, project_id=1, data=None, query=""):
    kwargs = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    if data is not None:
        kwargs.update(data=data if isinstance(data, str) else json.dumps(data), content_type="application/json")
    return getattr(client, method)(URL.format(project_id) + query, **kwargs)


def truth():
    return sorted(Annotation.objects.filter(ground_truth=True).values_list("ls_annotation_id", flat=True))


def test_mark_by_annotation_ids(client, key, project):
    response = call(client, key, "post", data={"annotations": [22, 21]})
    assert response.status_code == 200
    body = response.json()
    assert [a["id"] for a in body["data"]] == [21, 22]
    assert all(a["ground_truth"] and not a["ls_ground_truth"] for a in body["data"])
    assert body["data"][0]["task"] == 1 and body["data"][0]["result"][0]["value"]["choices"] == ["Positive"]
    assert body["project"] == 1 and body["ground_truth_revision"] == 1
    assert truth() == [21, 22]


def test_mark_by_task_takes_its_latest_annotation(client, key, project):
    response = call(client, key, "post", data={"tasks": [2]})
    assert [a["id"] for a in response.json()["data"]] == [23]
    assert truth() == [23]


def test_marking_again_changes_nothing(client, key, project):
    call(client, key, "post", data={"annotations": [21]})
    response = call(client, key, "post", data={"annotations": [21]})
    assert response.json()["ground_truth_revision"] == 1


def test_unmark_by_annotation_and_by_task(client, key, project):
    call(client, key, "post", data={"annotations": [21, 22, 23]})
    response = call(client, key, "delete", data={"annotations": [21]})
    assert response.status_code == 200 and response.json()["data"][0]["ground_truth"] is False
    assert truth() == [22, 23]
    call(client, key, "delete", data={"tasks": [2]})
    assert truth() == []
    assert LabelingProject.objects.get().ground_truth_revision == 3  # one bump per change request


def test_list_the_projects_ground_truth(client, key, project):
    call(client, key, "post", data={"annotations": [23, 21]})
    response = call(client, key, "get")
    assert response.status_code == 200
    assert [a["id"] for a in response.json()["data"]] == [21, 23] and response.json()["has_more"] is False
    page = call(client, key, "get", query="?limit=1").json()
    assert [a["id"] for a in page["data"]] == [21] and page["has_more"] is True
    rest = call(client, key, "get", query="?after=21").json()
    assert [a["id"] for a in rest["data"]] == [23]


def test_a_cancelled_annotation_cannot_be_ground_truth(client, key, project):
    response = call(client, key, "post", data={"annotations": [21, 24]})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "annotation_cancelled"
    assert truth() == []  # nothing changed
    assert call(client, key, "post", data={"tasks": [3]}).status_code == 409


def test_unknown_project_is_404(client, key, project):
    response = call(client, key, "get", project_id=99)
    assert response.status_code == 404 and "99" in response.json()["error"]["message"]
    assert call(client, key, "post", project_id=99, data={"annotations": [21]}).status_code == 404


def test_unknown_or_deleted_annotations_and_tasks_are_404(client, key, project):
    assert call(client, key, "post", data={"annotations": [21, 999]}).status_code == 404
    assert call(client, key, "post", data={"tasks": [999]}).status_code == 404
    deliver({"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": [{"id": 21}]})
    assert call(client, key, "post", data={"annotations": [21]}).status_code == 404
    assert truth() == []


@pytest.mark.parametrize(
    "data",
    [
        "{not json",
        "[21]",
        {},
        {"annotations": []},
        {"annotations": "21"},
        {"annotations": ["a"]},
        {"annotations": [0]},
        {"tasks": [1.5]},
    ],
)
def test_bad_bodies_are_400(client, key, project, data):
    response = call(client, key, "post", data=data)
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["message"]
    assert truth() == []


def test_an_api_key_is_needed(client, project):
    assert client.get(URL.format(1)).status_code == 401
    assert client.post(URL.format(1), data={"annotations": [21]}, content_type="application/json").status_code == 401


def test_a_mark_here_stands_until_label_studios_flag_changes(project):
    store.ground_truth_set(project=project, value=True, annotation_ids=[21])
    deliver(annotation_event(21, 1, "Negative", "2026-11-27T22:00:00Z"))  # edited, flag still false
    annotation = Annotation.objects.get(ls_annotation_id=21)
    assert annotation.ground_truth and annotation.result[0]["value"]["choices"] == ["Negative"]
    deliver(annotation_event(21, 1, "Negative", "2026-11-27T22:00:01Z", ground_truth=True))
    store.ground_truth_set(project=project, value=False, annotation_ids=[21])  # unmarked here
    assert not Annotation.objects.get(ls_annotation_id=21).ground_truth
    deliver(annotation_event(21, 1, "Negative", "2026-11-27T22:00:02Z", ground_truth=True))  # flag unchanged
    assert not Annotation.objects.get(ls_annotation_id=21).ground_truth
    deliver(annotation_event(21, 1, "Negative", "2026-11-27T22:00:03Z", ground_truth=False))
    deliver(annotation_event(21, 1, "Negative", "2026-11-27T22:00:04Z", ground_truth=True))  # flagged again
    assert Annotation.objects.get(ls_annotation_id=21).ground_truth
