"""GET /v1/openapi.json, the public schema."""

from rest_framework.test import APIClient


def test_openapi_schema_is_public_and_lists_every_route(db):
    import yaml

    response = APIClient().get("/v1/openapi.json")
    assert response.status_code == 200
    # YAML is a superset of JSON, so this reads the schema whichever renderer answered.
    paths = yaml.safe_load(response.content)["paths"]
    for path in (
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/files/{file_id}/content",
        "/v1/batches",
        "/v1/batches/{batch_id}",
        "/v1/batches/{batch_id}/cancel",
        "/v1/models",
    ):
        assert path in paths


def test_openapi_json_is_json(db):
    response = APIClient().get("/v1/openapi.json")
    assert response["Content-Type"].startswith("application/json") or "json" in response["Content-Type"]
    assert response.json()["openapi"].startswith("3.")
