"""GET /v1/models and GET /v1/models/{id} (served by the workers app, tested with the API)."""

from workers.models import RegisteredModel

from .factories import assert_error


def test_list_shows_active_models_by_name(api, chat_model, embedding_model):
    RegisteredModel.objects.create(name="retired", path="/x", is_active=False)
    response = api.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny-embed", "tiny-llama"]
    for model in body["data"]:
        assert set(model) == {"id", "object", "created", "owned_by"}
        assert model["object"] == "model"
        assert isinstance(model["created"], int)
        assert model["owned_by"] == "vllm-batch"


def test_list_does_not_reveal_paths(api, chat_model):
    assert "/nonexistent" not in api.get("/v1/models").content.decode()


def test_retrieve_a_model(api, chat_model):
    response = api.get("/v1/models/tiny-llama")
    assert response.status_code == 200
    assert response.json() == chat_model.to_openai()


def test_retrieve_a_model_with_a_slash_in_its_name(api, db):
    RegisteredModel.objects.create(name="org/model-1b", path="/x")
    assert api.get("/v1/models/org/model-1b").json()["id"] == "org/model-1b"


def test_retrieve_unknown_or_inactive_model_is_not_found(api, db):
    RegisteredModel.objects.create(name="retired", path="/x", is_active=False)
    assert_error(api.get("/v1/models/nope"), 404, param="model")
    assert_error(api.get("/v1/models/retired"), 404, param="model")


def test_models_need_a_key(anon, chat_model):
    assert anon.get("/v1/models").status_code == 401
    assert anon.get("/v1/models/tiny-llama").status_code == 401
