"""POST/GET /v1/batches, GET /v1/batches/{id}."""

import datetime

import pytest
from django.utils import timezone

from jobs.models import Batch

from .factories import assert_error, chat_request, embedding_request, make_batch, make_input_file

BATCH_KEYS = {
    "id",
    "object",
    "endpoint",
    "model",
    "errors",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "request_counts",
    "usage",
    "metadata",
    # Extensions: the queue's estimates.
    "queue_position",
    "estimated_start_at",
    "estimated_finish_at",
}
TIMESTAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at")


@pytest.fixture
def input_file(user, chat_model):
    return make_input_file(user, [chat_request("a"), chat_request("b")])


# -- create -------------------------------------------------------------------


def test_create_returns_a_validating_batch_with_every_key(create_batch, input_file):
    response = create_batch(input_file.id, metadata={"team": "search"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == BATCH_KEYS
    assert body["id"].startswith("batch_")
    assert body["object"] == "batch"
    assert body["endpoint"] == "/v1/chat/completions"
    assert body["model"] is None
    assert body["errors"] is None
    assert body["input_file_id"] == input_file.id
    assert body["completion_window"] == "24h"
    assert body["status"] == "validating"
    assert body["output_file_id"] is None
    assert body["error_file_id"] is None
    assert isinstance(body["created_at"], int)
    assert body["expires_at"] == body["created_at"] + 86400
    for key in (*TIMESTAMPS, "cancelled_at"):
        assert body[key] is None
    assert body["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert body["usage"] == {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    assert body["metadata"] == {"team": "search"}

    stored = Batch.objects.get(pk=body["id"])
    assert stored.status == "validating"
    assert stored.owner == input_file.owner
    assert stored.metadata == {"team": "search"}


def test_create_without_metadata_answers_null(create_batch, input_file):
    assert create_batch(input_file.id).json()["metadata"] is None
    assert create_batch(input_file.id, metadata=None).json()["metadata"] is None


def test_create_enqueues_the_batch_once_committed(
    create_batch, input_file, monkeypatch, django_capture_on_commit_callbacks
):
    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", queued.append)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        body = create_batch(input_file.id).json()
    assert len(callbacks) == 1
    assert queued == [body["id"]]


def test_refused_create_enqueues_nothing(create_batch, input_file, monkeypatch, django_capture_on_commit_callbacks):
    queued = []
    monkeypatch.setattr("jobs.queueing.enqueue_batch", queued.append)
    with django_capture_on_commit_callbacks(execute=True):
        create_batch(input_file.id, endpoint="/v1/nope")
    assert queued == []
    assert not Batch.objects.exists()


def test_create_with_an_unsupported_endpoint_is_refused(create_batch, input_file):
    assert_error(create_batch(input_file.id, endpoint="/v1/images"), 400, code="invalid_value", param="endpoint")
    assert not Batch.objects.exists()


@pytest.mark.parametrize("window", ["48h", "1h", "", 24])
def test_create_with_an_unsupported_completion_window_is_refused(create_batch, input_file, window):
    assert_error(create_batch(input_file.id, completion_window=window), 400, param="completion_window")
    assert not Batch.objects.exists()


def test_create_without_a_completion_window_is_refused(api, input_file):
    response = api.post(
        "/v1/batches", {"input_file_id": input_file.id, "endpoint": "/v1/chat/completions"}, format="json"
    )
    assert_error(response, 400, code="missing_required_parameter", param="completion_window")


def test_create_without_an_input_file_is_refused(api, input_file):
    response = api.post("/v1/batches", {"endpoint": "/v1/chat/completions", "completion_window": "24h"}, format="json")
    assert_error(response, 400, code="missing_required_parameter", param="input_file_id")


def test_create_with_a_non_string_metadata_value_is_refused(create_batch, input_file):
    assert_error(create_batch(input_file.id, metadata={"n": 1}), 400, code="invalid_type", param="metadata.n")
    assert_error(create_batch(input_file.id, metadata={"n": None}), 400, code="invalid_type")
    assert not Batch.objects.exists()


def test_create_with_metadata_not_an_object_is_refused(create_batch, input_file):
    assert_error(create_batch(input_file.id, metadata=["a"]), 400, code="invalid_type", param="metadata")
    assert_error(create_batch(input_file.id, metadata="a"), 400, code="invalid_type", param="metadata")


def test_create_with_more_than_16_metadata_pairs_is_refused(create_batch, input_file):
    sixteen = {f"k{i}": "v" for i in range(16)}
    assert create_batch(input_file.id, metadata=sixteen).status_code == 200
    seventeen = {f"k{i}": "v" for i in range(17)}
    assert_error(create_batch(input_file.id, metadata=seventeen), 400, code="invalid_value", param="metadata")
    assert Batch.objects.count() == 1


def test_create_with_too_long_metadata_is_refused(create_batch, input_file):
    assert_error(create_batch(input_file.id, metadata={"k" * 65: "v"}), 400, code="invalid_value")
    assert_error(create_batch(input_file.id, metadata={"k": "v" * 513}), 400, code="invalid_value")
    assert not Batch.objects.exists()


def test_create_with_an_unknown_file_is_not_found(create_batch, db):
    assert_error(create_batch("file-nope"), 404)
    assert not Batch.objects.exists()


def test_create_with_another_owners_file_is_not_found(create_batch, other_user, chat_model):
    theirs = make_input_file(other_user, [chat_request("a")])
    assert_error(create_batch(theirs.id), 404)
    assert not Batch.objects.exists()


def test_create_from_an_output_file_is_refused(create_batch, user, db):
    from jobs.models import File

    output = File.objects.create(owner=user, purpose="batch_output", filename="o.jsonl", storage_name="x")
    assert_error(create_batch(output.id), 400, code="invalid_value", param="input_file_id")


def test_create_with_a_malformed_json_body_answers_400(api, db):
    response = api.post("/v1/batches", data="{not json", content_type="application/json")
    assert_error(response, 400, code="invalid_json")


def test_create_with_a_non_object_json_body_answers_400(api, db):
    response = api.post("/v1/batches", data="[1, 2]", content_type="application/json")
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_create_as_form_data_is_unsupported(api, input_file):
    response = api.post(
        "/v1/batches",
        {"input_file_id": input_file.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        format="multipart",
    )
    assert_error(response, 415, code="unsupported_media_type")


def test_create_for_each_endpoint(create_batch, user, chat_model, embedding_model):
    for endpoint, lines in (
        ("/v1/chat/completions", [chat_request("a")]),
        ("/v1/completions", [{"custom_id": "a"}]),
        ("/v1/embeddings", [embedding_request("a")]),
    ):
        file = make_input_file(user, lines)
        assert create_batch(file.id, endpoint=endpoint).json()["endpoint"] == endpoint


# -- retrieve and list ---------------------------------------------------------


def test_retrieve_returns_the_batch(api, create_batch, input_file):
    created = create_batch(input_file.id).json()
    response = api.get(f"/v1/batches/{created['id']}")
    assert response.status_code == 200
    # The estimates count from the time of each answer.
    estimates = ("estimated_start_at", "estimated_finish_at")
    assert {k: v for k, v in response.json().items() if k not in estimates} == {
        k: v for k, v in created.items() if k not in estimates
    }


def test_retrieve_shows_validation_errors_as_a_list(api, user, chat_model):
    batch = make_batch(user, [chat_request("a")])
    errors = [{"code": "model_not_found", "message": "m", "param": "body.model", "line": 1}]
    Batch.objects.filter(pk=batch.pk).update(status="failed", errors=errors, failed_at=timezone.now())
    body = api.get(f"/v1/batches/{batch.id}").json()
    assert body["status"] == "failed"
    assert body["errors"] == {"object": "list", "data": errors}
    assert isinstance(body["failed_at"], int)


def test_retrieve_shows_counts_and_usage(api, user, chat_model):
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(
        status="in_progress",
        model="tiny-llama",
        total_requests=10,
        completed_requests=6,
        failed_requests=1,
        input_tokens=70,
        output_tokens=30,
        in_progress_at=timezone.now(),
    )
    body = api.get(f"/v1/batches/{batch.id}").json()
    assert body["model"] == "tiny-llama"
    assert body["request_counts"] == {"total": 10, "completed": 6, "failed": 1}
    assert body["usage"]["input_tokens"] == 70
    assert body["usage"]["output_tokens"] == 30
    assert body["usage"]["total_tokens"] == 100
    assert isinstance(body["in_progress_at"], int)


def test_retrieve_unknown_batch_is_not_found(api, db):
    error = assert_error(api.get("/v1/batches/batch_nope"), 404)
    assert "batch_nope" in error["message"]


def _batches(user, count):
    now = timezone.now()
    ids = []
    for age in range(count, 0, -1):
        batch = make_batch(user, [chat_request("a")])
        Batch.objects.filter(pk=batch.pk).update(created_at=now - datetime.timedelta(seconds=age))
        ids.append(batch.id)
    return ids  # oldest first


def test_list_returns_newest_first(api, user, chat_model):
    ids = _batches(user, 3)
    body = api.get("/v1/batches").json()
    assert body["object"] == "list"
    assert [b["id"] for b in body["data"]] == ids[::-1]
    assert body["first_id"] == ids[2]
    assert body["last_id"] == ids[0]
    assert body["has_more"] is False
    assert all(set(b) == BATCH_KEYS for b in body["data"])


def test_list_pages_with_limit_and_after(api, user, chat_model):
    ids = _batches(user, 5)
    seen = []
    after = None
    while True:
        page = api.get("/v1/batches", {"limit": 2, **({"after": after} if after else {})}).json()
        assert len(page["data"]) <= 2
        seen += [b["id"] for b in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == ids[::-1]


def test_list_default_limit_is_20(api, user, chat_model):
    _batches(user, 21)
    body = api.get("/v1/batches").json()
    assert len(body["data"]) == 20
    assert body["has_more"] is True


def test_list_with_bad_query_answers_400(api, db):
    assert_error(api.get("/v1/batches?limit=0"), 400, param="limit")
    assert_error(api.get("/v1/batches?limit=101"), 400, param="limit")
    assert_error(api.get("/v1/batches?limit=x"), 400, param="limit")


def test_list_after_an_unknown_id_is_not_found(api, db):
    assert_error(api.get("/v1/batches?after=batch_nope"), 404, param="after")


def test_list_after_another_owners_batch_is_not_found(api, other_user, chat_model):
    theirs = make_batch(other_user, [chat_request("a")])
    assert_error(api.get(f"/v1/batches?after={theirs.id}"), 404)
