"""Bearer-key authentication and owner scoping."""

from django.utils import timezone

from jobs.models import ApiKey, hash_api_key

from .factories import make_batch, make_client, make_input_file


def assert_invalid_api_key(response):
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert error["message"]


def test_request_without_key_is_refused_with_invalid_api_key(anon, db):
    assert_invalid_api_key(anon.get("/v1/files"))
    assert_invalid_api_key(anon.get("/v1/batches"))
    assert_invalid_api_key(anon.get("/v1/models"))


def test_unknown_key_is_refused(anon, db):
    anon.credentials(HTTP_AUTHORIZATION="Bearer vb-not-a-real-key")
    assert_invalid_api_key(anon.get("/v1/files"))


def test_header_without_bearer_scheme_is_refused(api, anon):
    anon.credentials(HTTP_AUTHORIZATION=f"Basic {api.raw_key}")
    assert_invalid_api_key(anon.get("/v1/files"))
    anon.credentials(HTTP_AUTHORIZATION="Bearer ")
    assert_invalid_api_key(anon.get("/v1/files"))


def test_bearer_scheme_is_case_insensitive(api, anon):
    anon.credentials(HTTP_AUTHORIZATION=f"bearer {api.raw_key}")
    assert anon.get("/v1/files").status_code == 200


def test_revoked_key_is_refused(api):
    ApiKey.objects.filter(pk=api.api_key.pk).update(revoked_at=timezone.now())
    assert_invalid_api_key(api.get("/v1/files"))


def test_key_of_inactive_user_is_refused(api, user):
    user.is_active = False
    user.save()
    assert_invalid_api_key(api.get("/v1/files"))


def test_only_the_key_hash_is_stored(api):
    api_key = ApiKey.objects.get(pk=api.api_key.pk)
    assert api.raw_key.startswith("vb-")
    assert api_key.key_hash == hash_api_key(api.raw_key)
    assert api.raw_key not in (api_key.key_hash, api_key.prefix)
    assert api.raw_key.startswith(api_key.prefix)


def test_successful_request_records_last_used_at(api):
    assert ApiKey.objects.get(pk=api.api_key.pk).last_used_at is None
    assert api.get("/v1/files").status_code == 200
    assert ApiKey.objects.get(pk=api.api_key.pk).last_used_at is not None


def test_every_key_of_one_owner_sees_the_same_objects(api, user):
    file = make_input_file(user, [{"custom_id": "a"}])
    second = make_client(user, name="second")
    assert second.get(f"/v1/files/{file.id}").json()["id"] == file.id
    assert [f["id"] for f in second.get("/v1/files").json()["data"]] == [file.id]


def test_another_owners_objects_are_not_found(api, user, other_api, chat_model):
    from .factories import chat_request

    batch = make_batch(user, [chat_request("a")])
    for path in (
        f"/v1/files/{batch.input_file_id}",
        f"/v1/files/{batch.input_file_id}/content",
        f"/v1/batches/{batch.id}",
    ):
        response = other_api.get(path)
        assert response.status_code == 404, path
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert other_api.post(f"/v1/batches/{batch.id}/cancel").status_code == 404
    assert other_api.delete(f"/v1/files/{batch.input_file_id}").status_code == 404
    assert other_api.get("/v1/files").json()["data"] == []
    assert other_api.get("/v1/batches").json()["data"] == []
