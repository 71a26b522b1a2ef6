"""The labeling admin: projects with their controls, templates and a prompt
preview; predictions read-only."""

import pytest
from django.contrib.auth.models import User

from labeling.models import LabelingProject, PredictionLog
from workers.models import RegisteredModel

pytestmark = pytest.mark.django_db

CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="Positive"/><Choice value="Negative"/></Choices>'
    '<Rating name="stars" toName="text"/><RectangleLabels name="box" toName="text"><Label value="A"/></RectangleLabels>'
    "</View>"
)


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser("admin", "a@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def project(db):
    model = RegisteredModel.objects.create(name="tiny-llama", path="/m")
    project = LabelingProject.objects.create(
        ls_project="7.1700000000",
        ls_project_id=7,
        label_config=CONFIG,
        model=model,
        sample_task_data={"text": "The soup was cold."},
    )
    PredictionLog.objects.create(
        project=project, task_id=42, result=[], score=0.5, model_version=project.model_version, latency_ms=12
    )
    return project


def form_data(project, **changes):
    data = {
        "title": "",
        "ls_project": project.ls_project,
        "ls_project_id": project.ls_project_id,
        "ls_hostname": "",
        "ls_access_token": "",
        "label_config": project.label_config,
        "model": project.model_id,
        "prompt_templates": "{}",
        "sample_task_data": '{"text": "The soup was cold."}',
        "temperature": "0",
        "max_tokens": "512",
        "seed": "",
        "predictions-TOTAL_FORMS": "1",
        "predictions-INITIAL_FORMS": "1",
        "predictions-MIN_NUM_FORMS": "0",
        "predictions-MAX_NUM_FORMS": "0",
        "predictions-0-id": str(project.predictions.get().id),
        "predictions-0-project": str(project.id),
    }
    data.update(changes)
    return data


def test_project_page_shows_controls_templates_preview_and_recent_predictions(staff, project):
    page = staff.get(f"/admin/labeling/labelingproject/{project.id}/change/").content.decode()
    assert "sentiment (Choices): Positive, Negative" in page
    assert "box (RectangleLabels): left out, this control type is not supported" in page
    assert "The soup was cold." in page  # the preview, from the sample task
    assert "Answer with a JSON object with the keys: sentiment, stars." in page
    assert project.model_version in page
    assert "42" in page  # the recent prediction's task


def test_editing_a_template_changes_the_model_version(staff, project):
    before = project.model_version
    response = staff.post(
        f"/admin/labeling/labelingproject/{project.id}/change/",
        form_data(project, prompt_templates='{"sentiment": "Mood of: {text}? {labels}"}'),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    project.refresh_from_db()
    assert project.prompt_templates == {"sentiment": "Mood of: {text}? {labels}"}
    assert project.model_version != before and project.model_version.startswith("tiny-llama@")


@pytest.mark.parametrize(
    ("templates", "message"),
    [
        ('{"sentiment": "{text.__class__}"}', "not allowed"),
        ('{"sentiment": "{secret}"}', "Unknown placeholder"),
        ('{"nope": "x"}', "is not a control"),
        ('["x"]', "Give an object"),
    ],
)
def test_bad_templates_are_refused_with_the_reason(staff, project, templates, message):
    response = staff.post(
        f"/admin/labeling/labelingproject/{project.id}/change/", form_data(project, prompt_templates=templates)
    )
    assert response.status_code == 200
    assert message in response.content.decode()


def test_a_broken_config_is_refused(staff, project):
    response = staff.post(
        f"/admin/labeling/labelingproject/{project.id}/change/", form_data(project, label_config="<View><Text")
    )
    assert response.status_code == 200
    assert "not well-formed" in response.content.decode()


def test_predictions_list_is_read_only_with_filters(staff, project):
    page = staff.get("/admin/labeling/predictionlog/?error__isempty=1").content.decode()
    assert "42" in page
    assert staff.get("/admin/labeling/predictionlog/add/").status_code == 403
