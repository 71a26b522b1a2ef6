"""The one error envelope (batchsite.errors) for what no view handles itself."""

from rest_framework.test import APIClient

from .factories import assert_error


def test_unknown_path_answers_the_error_envelope(db):
    response = APIClient().get("/v1/no-such-thing")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "Unknown path: /v1/no-such-thing",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_url",
        }
    }


def test_wrong_method_answers_405_in_the_envelope(api):
    assert_error(api.put("/v1/files"), 405, code="method_not_allowed")
    assert_error(api.delete("/v1/batches"), 405, code="method_not_allowed")
    assert_error(api.get("/v1/batches/batch_x/cancel"), 405, code="method_not_allowed")


def test_a_null_json_body_answers_400(api):
    response = api.post("/v1/batches", data="null", content_type="application/json")
    assert_error(response, 400, code="missing_required_parameter")


def test_a_form_field_instead_of_a_file_answers_400(api):
    response = api.post("/v1/files", {"file": "not a file", "purpose": "batch"}, format="multipart")
    assert_error(response, 400, code="invalid_type", param="file")


def test_a_json_body_over_the_limit_answers_413_in_the_envelope(db, settings):
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    from jobs.services import api_key_create

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    _, key = api_key_create(owner=get_user_model().objects.create(username="big"), name="k")
    response = APIClient().post(
        "/v1/batches",
        data='{"metadata": "' + "x" * 4096 + '"}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
