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


def test_schema_generates_without_warnings_and_validates(db, tmp_path):
    from django.core.management import call_command

    target = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))

    import yaml

    schema = yaml.safe_load(target.read_text())
    assert schema["components"]["securitySchemes"]["ApiKeyAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `manage.py create_api_key`, as `Authorization: Bearer <key>`.",
    }
    error = {"$ref": "#/components/schemas/Error"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status in ("400", "401"):
                assert operation["responses"][status]["content"]["application/json"]["schema"] == error, (path, method)
    assert schema["components"]["schemas"]["Error"]["properties"]["error"]["required"] == [
        "message",
        "type",
        "param",
        "code",
    ]
    assert "404" in schema["paths"]["/v1/files/{file_id}"]["get"]["responses"]
    assert "409" in schema["paths"]["/v1/files/{file_id}"]["delete"]["responses"]
    # Deletes answer 200 with a body (as OpenAI's do), not drf-spectacular's default 204.
    deletes = {path: ops["delete"]["responses"] for path, ops in schema["paths"].items() if "delete" in ops}
    assert deletes and all("200" in r and "204" not in r for r in deletes.values()), deletes
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/inference"):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"200", "503", "504"} <= set(responses), path
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    request = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert "messages" in schema["components"]["schemas"][request]["required"]
    models = schema["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    listing = schema["components"]["schemas"][models["$ref"].rsplit("/", 1)[1]]
    assert listing["properties"]["data"]["type"] == "array"


def test_upload_schema_sends_the_file_as_binary(db):
    schema = APIClient().get("/v1/openapi.json").json()
    upload = schema["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    fields = schema["components"]["schemas"][upload["$ref"].rsplit("/", 1)[1]]["properties"]
    # Not a URI string: a client built from the schema must send the file's bytes.
    assert fields["file"]["type"] == "string" and fields["file"]["format"] == "binary"
    batches = {p["name"]: p["schema"] for p in schema["paths"]["/v1/batches"]["get"]["parameters"]}
    assert batches["created_before"]["maximum"] == batches["created_after"]["maximum"] == 253_402_300_799
