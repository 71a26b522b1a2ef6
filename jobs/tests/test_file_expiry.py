"""Files with expires_after (OpenAI's Files API) and the schedule that deletes them."""

import datetime

import httpx
import openai
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from django_q.models import Schedule

from jobs import services, tasks
from jobs.models import File

from .factories import assert_error, chat_request, jsonl, make_batch, make_input_file


def upload_with(api, **fields):
    data = {"file": SimpleUploadedFile("in.jsonl", jsonl([chat_request("a")])), "purpose": "batch", **fields}
    return api.post("/v1/files", data, format="multipart")


def test_expires_after_sets_the_files_expiry(api):
    response = upload_with(api, **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "7200"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["expires_at"] == body["created_at"] + 7200
    assert api.get(f"/v1/files/{body['id']}").json()["expires_at"] == body["expires_at"]


def test_without_expires_after_a_file_is_kept(api):
    assert upload_with(api).json()["expires_at"] is None


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "7200"}, "expires_after[anchor]", None),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}, "expires_after[seconds]", None),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "99999999"}, "expires_after[seconds]", None),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"}, "expires_after[seconds]", None),
        ({"expires_after[anchor]": "created_at"}, "expires_after[seconds]", "missing_required_parameter"),
        ({"expires_after[seconds]": "7200"}, "expires_after[anchor]", "missing_required_parameter"),
    ],
)
def test_a_bad_expires_after_is_a_400(api, fields, param, code):
    assert_error(upload_with(api, **fields), 400, code=code, param=param)
    assert not File.objects.exists()


def test_the_openai_sdk_sends_expires_after_as_these_fields():
    """The SDK's multipart names are the ones the upload reads."""
    seen = {}

    def handler(request):
        seen["body"] = request.read()
        return httpx.Response(500)

    client = openai.OpenAI(
        api_key="k",
        base_url="http://testserver/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    with pytest.raises(openai.InternalServerError):
        client.files.create(
            file=("in.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 7200}
        )
    assert b'name="expires_after[anchor]"\r\n\r\ncreated_at' in seen["body"]
    assert b'name="expires_after[seconds]"\r\n\r\n7200' in seen["body"]


def test_expired_files_are_deleted_and_others_kept(user, chat_model):
    now = timezone.now()
    expired = make_input_file(user, [chat_request("a")])
    kept = make_input_file(user, [chat_request("b")])
    forever = make_input_file(user, [chat_request("c")])
    busy = make_batch(user, [chat_request("d")]).input_file
    File.objects.filter(pk__in=[expired.pk, busy.pk]).update(expires_at=now - datetime.timedelta(seconds=1))
    File.objects.filter(pk=kept.pk).update(expires_at=now + datetime.timedelta(hours=1))

    assert tasks.delete_expired_files_task() == 1
    assert set(File.objects.values_list("pk", flat=True)) == {kept.pk, forever.pk, busy.pk}


@pytest.mark.django_db(transaction=True)
def test_an_expired_files_content_is_removed_from_storage(user):
    file = make_input_file(user, [chat_request("a")])
    File.objects.filter(pk=file.pk).update(expires_at=timezone.now())
    assert default_storage.exists(file.storage_name)
    assert services.files_delete_expired() == 1
    assert not default_storage.exists(file.storage_name)


def test_the_expiry_runs_on_a_schedule(db, settings):
    tasks.file_expiry_schedule_ensure(5)
    tasks.file_expiry_schedule_ensure(5)
    schedule = Schedule.objects.get(name=tasks.FILE_EXPIRY_SCHEDULE)
    assert (schedule.func, schedule.schedule_type, schedule.minutes, schedule.repeats) == (
        "jobs.tasks.delete_expired_files_task",
        Schedule.MINUTES,
        5,
        -1,
    )
