"""GET /v1/labeling/projects/{id}/accuracy: its shape, the comparison, and errors in the envelope."""

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from jobs.tests.factories import make_client, make_user
from labeling.models import LabelingProject

from .test_evaluation import VERSION_A, VERSION_B, make_project, seed

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(db):
    return make_client(make_user("alice"))


@pytest.fixture
def project(db):
    cache.clear()
    project = make_project(ls_id=12)
    seed(project)
    return project


def url(reference, **query):
    from urllib.parse import urlencode

    return f"/v1/labeling/projects/{reference}/accuracy" + (f"?{urlencode(query)}" if query else "")


def error_of(response, status):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_accuracy_of_a_version(api, project):
    response = api.get(url(12, model_version=VERSION_A))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "labeling.accuracy"
    assert (body["project"], body["project_key"]) == (12, "12.1700000000")
    assert body["model_version"] == VERSION_A
    assert body["ground_truth_revision"] == 0
    assert (body["tasks"], body["predicted"], body["missing_predictions"]) == (5, 4, 1)
    assert body["coverage"] == pytest.approx(0.8)
    assert body["predictions_without_ground_truth"] == 2
    assert body["controls"]["sentiment"]["accuracy"] == pytest.approx(0.6)
    assert body["controls"]["sentiment"]["confusion_matrix"]["matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert body["controls"]["stars"]["mae"] == pytest.approx(0.75)
    assert body["controls"]["comment"] == {"type": "textarea", "supported": False}
    assert body["model_versions"][0].keys() == {"model_version", "predictions"}
    assert {v["model_version"]: v["predictions"] for v in body["model_versions"]} == {VERSION_A: 6, VERSION_B: 3}
    assert body["comparison"] is None
    # The project key names it as well as the id.
    assert api.get(url("12.1700000000", model_version=VERSION_A)).json() == body


def test_default_is_the_projects_current_version_even_without_predictions(api, project):
    body = api.get(url(12)).json()
    assert body["model_version"] == project.model_version
    assert (body["tasks"], body["predicted"], body["coverage"]) == (5, 0, 0.0)
    assert body["controls"]["sentiment"]["accuracy"] == 0.0


def test_compare_two_versions_on_the_same_tasks(api, project):
    body = api.get(url(12, model_version=VERSION_A, compare=VERSION_B)).json()
    comparison = body["comparison"]
    assert comparison["model_versions"] == [VERSION_A, VERSION_B]
    assert (comparison["tasks"], comparison["only_a"], comparison["only_b"]) == (3, 1, 0)
    sentiment = comparison["controls"]["sentiment"]
    assert sentiment["a"]["accuracy"] == pytest.approx(2 / 3)
    assert sentiment["b"]["accuracy"] == pytest.approx(2 / 3)
    assert sentiment["outcomes"] == {"both_correct": 1, "only_a_correct": 1, "only_b_correct": 1, "both_wrong": 0}
    assert comparison["controls"]["comment"]["outcomes"] is None


def test_unknown_project_is_404_in_the_envelope(api, project):
    assert error_of(api.get(url(999)), 404)["param"] == "project_id"
    assert error_of(api.get(url("abc")), 404)["param"] == "project_id"
    assert error_of(api.get(url("12.1")), 404)["param"] == "project_id"


def test_two_label_studio_instances_with_the_same_id_are_told_apart_by_key(api, project):
    LabelingProject.objects.create(ls_project="12.1800000000", ls_project_id=12, label_config=project.label_config)
    error = error_of(api.get(url(12)), 400)
    assert error["code"] == "ambiguous_project"
    assert api.get(url("12.1700000000", model_version=VERSION_A)).json()["tasks"] == 5


@pytest.mark.parametrize(
    ("query", "param", "code"),
    [
        ({"model_version": "nobody@123"}, "model_version", "unknown_model_version"),
        ({"model_version": VERSION_A, "compare": "nobody@123"}, "compare", "unknown_model_version"),
        ({"model_version": VERSION_A, "compare": VERSION_A}, "compare", "invalid_value"),
        ({"compare": "x" * 301}, "compare", "invalid_value"),
    ],
)
def test_bad_parameters_are_400(api, project, query, param, code):
    error = error_of(api.get(url(12, **query)), 400)
    assert (error["param"], error["code"]) == (param, code)


def test_needs_an_api_key(project):
    assert error_of(APIClient().get(url(12)), 401)["code"] == "invalid_api_key"


def test_the_route_is_in_the_openapi_schema(db):
    import yaml

    schema = yaml.safe_load(APIClient().get("/v1/openapi.json").content)
    operation = schema["paths"]["/v1/labeling/projects/{project_id}/accuracy"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"project_id", "model_version", "compare"}
    assert {"200", "400", "401", "404"} <= set(operation["responses"])
