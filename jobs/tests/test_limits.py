"""Throttling per API key and the per-owner quotas: open batches, stored bytes.
429 (and 413 for storage) in OpenAI's envelope, Retry-After on every 429."""

import pytest
from django.core.files.storage import default_storage

from jobs.models import File

from .factories import assert_error, chat_request, jsonl, make_batch, make_client


@pytest.fixture
def limits(settings):
    def set_limits(**values):
        settings.VLLM_BATCH = {**settings.VLLM_BATCH, **values}

    return set_limits


def test_a_key_past_its_rate_gets_429_with_retry_after(api, limits):
    limits(THROTTLE_RATE="3/m")
    for _ in range(3):
        assert api.get("/v1/files").status_code == 200
    response = api.get("/v1/files")
    error = assert_error(response, 429, code="rate_limit_exceeded")
    assert error["type"] == "requests"
    assert 1 <= int(response["Retry-After"]) <= 60


def test_the_rate_is_counted_per_key(api, user, limits):
    limits(THROTTLE_RATE="2/m")
    other_key = make_client(user, name="second")
    for _ in range(2):
        assert api.get("/v1/batches").status_code == 200
    assert api.get("/v1/batches").status_code == 429
    assert other_key.get("/v1/batches").status_code == 200


def test_a_cache_that_does_not_answer_lets_requests_through(api, limits, monkeypatch):
    from django.core.cache import cache
    from redis.exceptions import TimeoutError as RedisTimeout

    def stalled(*args, **kwargs):
        raise RedisTimeout("Timeout reading from socket")

    limits(THROTTLE_RATE="3/m")
    monkeypatch.setattr(cache, "get", stalled)
    assert all(api.get("/v1/files").status_code == 200 for _ in range(5))


def test_no_rate_means_no_throttling(api, limits):
    limits(THROTTLE_RATE="")
    assert all(api.get("/v1/models").status_code == 200 for _ in range(60))


def test_open_batches_are_limited_per_owner(api, other_api, user, limits, chat_model):
    limits(MAX_OPEN_BATCHES=2)
    first = make_batch(user, [chat_request("a")])
    make_batch(user, [chat_request("b")])
    upload = api.post(
        "/v1/files",
        {"file": _file(jsonl([chat_request("c")])), "purpose": "batch"},
        format="multipart",
    ).json()
    body = {"input_file_id": upload["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    response = api.post("/v1/batches", body, format="json")
    assert_error(response, 429, code="open_batches_limit")
    assert int(response["Retry-After"]) >= 1

    assert api.post(f"/v1/batches/{first.id}/cancel").json()["status"] == "cancelled"
    assert api.post("/v1/batches", body, format="json").status_code == 200


def _file(data, name="in.jsonl"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data)


def test_stored_bytes_are_limited_per_owner(api, other_api, limits):
    data = jsonl([chat_request("a")])
    limits(MAX_STORED_BYTES=len(data) * 2 + 1)
    for _ in range(2):
        assert api.post("/v1/files", {"file": _file(data), "purpose": "batch"}, format="multipart").status_code == 200
    stored_before = sorted(_stored_names())

    response = api.post("/v1/files", {"file": _file(data), "purpose": "batch"}, format="multipart")
    error = assert_error(response, 413, code="storage_quota_exceeded", param="file")
    assert "limit" in error["message"]
    assert File.objects.count() == 2
    assert sorted(_stored_names()) == stored_before

    assert other_api.post("/v1/files", {"file": _file(data), "purpose": "batch"}, format="multipart").status_code == 200
    file_id = File.objects.filter(owner__username="alice").first().id
    assert api.delete(f"/v1/files/{file_id}").status_code == 200
    assert api.post("/v1/files", {"file": _file(data), "purpose": "batch"}, format="multipart").status_code == 200


def _stored_names():
    names = []
    for directory in default_storage.listdir("")[0]:
        names += [f"{directory}/{name}" for name in default_storage.listdir(directory)[1]]
    return names
