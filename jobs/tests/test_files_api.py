"""POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET /v1/files/{id}/content."""

import datetime

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from jobs.models import Batch, File

from .factories import assert_error, chat_request, jsonl, make_batch

FILE_KEYS = {"id", "object", "bytes", "created_at", "expires_at", "filename", "purpose", "status", "status_details"}


# -- upload -------------------------------------------------------------------


def test_upload_returns_the_openai_file_object(upload, user):
    data = jsonl([chat_request("a"), chat_request("b")])
    response = upload(data=data, filename="requests.jsonl")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == FILE_KEYS
    assert body["id"].startswith("file-")
    assert body["object"] == "file"
    assert body["bytes"] == len(data)
    assert isinstance(body["created_at"], int)
    assert body["expires_at"] is None
    assert body["filename"] == "requests.jsonl"
    assert body["purpose"] == "batch"
    assert body["status"] == "processed"
    assert body["status_details"] is None

    stored = File.objects.get(pk=body["id"])
    assert stored.owner == user
    assert stored.line_count == 2
    with default_storage.open(stored.storage_name, "rb") as stream:
        assert stream.read() == data


def test_upload_counts_a_last_line_without_newline(upload):
    response = upload(data=b'{"a": 1}\n{"b": 2}')
    assert File.objects.get(pk=response.json()["id"]).line_count == 2


def test_upload_keeps_only_the_base_name_of_the_filename(upload):
    response = upload(data=b"{}\n", filename="../../etc/passwd.jsonl")
    assert response.json()["filename"] == "passwd.jsonl"
    stored = File.objects.get(pk=response.json()["id"])
    assert ".." not in stored.storage_name
    assert stored.id in stored.storage_name


def test_empty_upload_is_refused_and_nothing_is_stored(upload):
    assert_error(upload(data=b""), 400, code="empty_file", param="file")
    assert_error(upload(data=b"\n  \n\n"), 400, code="empty_file", param="file")
    assert not File.objects.exists()


def test_upload_over_the_limit_is_refused(upload, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "MAX_UPLOAD_BYTES": 100}
    assert_error(upload(data=b"x" * 101 + b"\n"), 400, code="file_too_large", param="file")
    assert not File.objects.exists()


def test_upload_far_over_the_limit_is_refused_before_reading(upload, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "MAX_UPLOAD_BYTES": 100}
    assert_error(upload(data=b"x" * (200 * 1024)), 400, code="file_too_large", param="file")
    assert not File.objects.exists()


def test_upload_exactly_at_the_limit_is_accepted(upload, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "MAX_UPLOAD_BYTES": 100}
    response = upload(data=b"x" * 99 + b"\n")
    assert response.status_code == 200
    assert response.json()["bytes"] == 100


def test_upload_with_a_malformed_content_length_answers_400(api):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api.post(
        "/v1/files",
        {"file": SimpleUploadedFile("a.jsonl", b"{}\n"), "purpose": "batch"},
        format="multipart",
        CONTENT_LENGTH="abc",
    )
    assert_error(response, 400)
    assert not File.objects.exists()


def test_upload_with_a_purpose_other_than_batch_is_refused(upload):
    assert_error(upload(data=b"{}\n", purpose="fine-tune"), 400, code="invalid_value", param="purpose")
    assert_error(upload(data=b"{}\n", purpose="batch_output"), 400, param="purpose")
    assert not File.objects.exists()


def test_upload_without_a_file_is_refused(api):
    response = api.post("/v1/files", {"purpose": "batch"}, format="multipart")
    assert_error(response, 400, code="missing_required_parameter", param="file")


def test_upload_without_a_purpose_is_refused(api):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api.post("/v1/files", {"file": SimpleUploadedFile("a.jsonl", b"{}\n")}, format="multipart")
    assert_error(response, 400, code="missing_required_parameter", param="purpose")


def test_upload_as_json_body_is_refused_without_a_500(api):
    response = api.post("/v1/files", {"purpose": "batch", "file": "{}"}, format="json")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


# -- retrieve and content ------------------------------------------------------


def test_retrieve_returns_the_same_object_as_upload(api, upload):
    uploaded = upload(data=b"{}\n").json()
    response = api.get(f"/v1/files/{uploaded['id']}")
    assert response.status_code == 200
    assert response.json() == uploaded


def test_retrieve_unknown_file_is_not_found(api):
    error = assert_error(api.get("/v1/files/file-nope"), 404)
    assert "file-nope" in error["message"]


def test_content_returns_the_uploaded_bytes(api, upload):
    data = jsonl([chat_request("a"), chat_request("b", content="héllo ✓")])
    file_id = upload(data=data, filename="mine.jsonl").json()["id"]
    response = api.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Length"] == str(len(data))
    assert response["Content-Disposition"] == 'attachment; filename="mine.jsonl"'
    assert b"".join(response.streaming_content) == data
    response.close()


def test_content_disposition_escapes_awkward_filenames(api, upload):
    for filename, expected in (
        ('say "hi".jsonl', 'attachment; filename="say \\"hi\\".jsonl"'),
        ("données.jsonl", "attachment; filename*=utf-8''donn%C3%A9es.jsonl"),
        ("日本.jsonl", "attachment; filename*=utf-8''%E6%97%A5%E6%9C%AC.jsonl"),
    ):
        uploaded = upload(data=b"{}\n", filename=filename).json()
        assert uploaded["filename"] == filename
        response = api.get(f"/v1/files/{uploaded['id']}/content")
        assert response["Content-Disposition"] == expected
        response.close()


def test_content_accepts_the_sdks_accept_header(api, upload):
    file_id = upload(data=b"{}\n").json()["id"]
    response = api.get(f"/v1/files/{file_id}/content", HTTP_ACCEPT="application/binary")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"{}\n"
    response.close()


def test_content_of_unknown_file_is_a_json_404(api):
    response = api.get("/v1/files/file-nope/content", HTTP_ACCEPT="application/binary")
    assert_error(response, 404)


# -- list ---------------------------------------------------------------------


def _three_files(upload):
    ids = [upload(data=b"{}\n", filename=f"{n}.jsonl").json()["id"] for n in range(3)]
    # Distinct seconds, oldest first, so the order does not hang on the id tie-break.
    now = timezone.now()
    for age, file_id in zip((3, 2, 1), ids, strict=True):
        File.objects.filter(pk=file_id).update(created_at=now - datetime.timedelta(seconds=age))
    return ids


def test_list_returns_newest_first_by_default(api, upload):
    ids = _three_files(upload)
    body = api.get("/v1/files").json()
    assert body["object"] == "list"
    assert [f["id"] for f in body["data"]] == ids[::-1]
    assert body["first_id"] == ids[2]
    assert body["last_id"] == ids[0]
    assert body["has_more"] is False
    assert all(set(f) == FILE_KEYS for f in body["data"])


def test_list_in_ascending_order(api, upload):
    ids = _three_files(upload)
    assert [f["id"] for f in api.get("/v1/files?order=asc").json()["data"]] == ids


def test_list_pages_with_limit_and_after(api, upload):
    ids = _three_files(upload)
    first = api.get("/v1/files?limit=2").json()
    assert [f["id"] for f in first["data"]] == [ids[2], ids[1]]
    assert first["has_more"] is True
    second = api.get(f"/v1/files?limit=2&after={first['last_id']}").json()
    assert [f["id"] for f in second["data"]] == [ids[0]]
    assert second["has_more"] is False
    asc = api.get(f"/v1/files?order=asc&after={ids[0]}").json()
    assert [f["id"] for f in asc["data"]] == ids[1:]


def test_list_pages_through_files_created_in_the_same_second(api, upload):
    ids = [upload(data=b"{}\n").json()["id"] for _ in range(5)]
    File.objects.update(created_at=timezone.now())
    seen = []
    after = None
    while True:
        query = "/v1/files?limit=2" + (f"&after={after}" if after else "")
        page = api.get(query).json()
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))


def test_list_filters_by_purpose(api, user, upload, chat_model):
    upload(data=b"{}\n")
    File.objects.create(owner=user, purpose="batch_output", filename="out.jsonl", storage_name="x")
    outputs = api.get("/v1/files?purpose=batch_output").json()["data"]
    assert [f["purpose"] for f in outputs] == ["batch_output"]
    inputs = api.get("/v1/files?purpose=batch").json()["data"]
    assert [f["purpose"] for f in inputs] == ["batch"]


def test_list_with_bad_query_answers_400(api):
    assert_error(api.get("/v1/files?limit=0"), 400, param="limit")
    assert_error(api.get("/v1/files?limit=abc"), 400, param="limit")
    assert_error(api.get("/v1/files?order=sideways"), 400, param="order")
    assert_error(api.get("/v1/files?purpose=nope"), 400, param="purpose")


def test_list_after_an_unknown_id_is_not_found(api):
    assert_error(api.get("/v1/files?after=file-nope"), 404, param="after")


def test_list_of_an_empty_account(api):
    assert api.get("/v1/files").json() == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


# -- delete -------------------------------------------------------------------


def test_delete_removes_the_row_and_the_stored_bytes(api, upload, django_capture_on_commit_callbacks):
    file_id = upload(data=b"{}\n").json()["id"]
    storage_name = File.objects.get(pk=file_id).storage_name
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"/v1/files/{file_id}")
    assert response.status_code == 200
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert not File.objects.filter(pk=file_id).exists()
    assert not default_storage.exists(storage_name)
    assert_error(api.get(f"/v1/files/{file_id}"), 404)


def test_delete_unknown_file_is_not_found(api):
    assert_error(api.delete("/v1/files/file-nope"), 404)


def test_delete_the_input_of_a_running_batch_is_a_conflict(api, user, chat_model):
    batch = make_batch(user, [chat_request("a")])
    assert_error(api.delete(f"/v1/files/{batch.input_file_id}"), 409, code="file_in_use")
    assert File.objects.filter(pk=batch.input_file_id).exists()


def test_delete_the_input_of_a_finished_batch_keeps_the_batch(api, user, chat_model):
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(status="completed", completed_at=timezone.now())
    assert api.delete(f"/v1/files/{batch.input_file_id}").status_code == 200
    body = api.get(f"/v1/batches/{batch.id}").json()
    assert body["input_file_id"] == batch.input_file_id


@pytest.mark.django_db(transaction=True)
def test_the_upload_copy_runs_outside_any_transaction(monkeypatch):
    """On SQLite a transaction around the copy would hold the write lock for all of it."""
    from django.db import connection

    from jobs import services

    from .factories import make_client, make_user

    seen = []
    real_store = services._store

    def store(file_id, stream):
        seen.append(connection.in_atomic_block)
        return real_store(file_id, stream)

    monkeypatch.setattr(services, "_store", store)
    client = make_client(make_user())
    body = jsonl([chat_request("a")])
    response = client.post(
        "/v1/files", {"file": SimpleUploadedFile("in.jsonl", body), "purpose": "batch"}, format="multipart"
    )
    assert response.status_code == 200, response.content
    assert seen == [False]
    assert File.objects.get(pk=response.json()["id"]).bytes == len(body)
