import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.urls import reverse

from jobs import ranges, services
from jobs.models import Batch, File

from .factories import chat_request, jsonl, make_batch


def download_url(file_id):
    return reverse("admin:jobs_file_download", args=[file_id])


@pytest.fixture
def batch(user, chat_model):
    batch = make_batch(user, [chat_request("a"), chat_request("b")])
    batch.total_requests, batch.completed_requests = 2, 1
    batch.save()
    return batch


def test_batch_list_shows_progress(admin_client, batch):
    page = admin_client.get("/admin/jobs/batch/").content.decode()
    assert '<progress max="100" value="50"></progress> 1/2 (0 failed)' in page
    # The file links are on the batch's page (test below): the list stays narrow.
    assert f'href="{download_url(batch.input_file_id)}"' not in page


def test_batch_list_filters_by_status(admin_client, batch):
    listed = admin_client.get("/admin/jobs/batch/", {"status__exact": "completed"}).context["cl"].result_list
    assert list(listed) == []
    listed = admin_client.get("/admin/jobs/batch/", {"status__exact": "validating"}).context["cl"].result_list
    assert list(listed) == [batch]


def test_batch_detail_links_every_file_it_has(admin_client, user, batch):
    output = services.file_create(
        owner=user, upload=ContentFile(b'{"custom_id": "a"}\n', name="out.jsonl"), purpose="batch_output"
    )
    Batch.objects.filter(pk=batch.pk).update(output_file=output)

    page = admin_client.get(reverse("admin:jobs_batch_change", args=[batch.pk])).content.decode()

    assert f'href="{download_url(batch.input_file_id)}"' in page
    assert f'href="{download_url(output.pk)}"' in page
    assert ">errors</a>" not in page


def test_batch_page_shows_who_holds_and_ran_each_range_of_a_split_batch(admin_client, batch, settings):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "SPLIT_REQUESTS": 1}
    Batch.objects.filter(pk=batch.pk).update(status="in_progress")
    ranges.split(batch)
    ranges.claim(batch.pk, "node-b@x:42")

    page = admin_client.get(reverse("admin:jobs_batch_change", args=[batch.pk])).content.decode()

    assert "Batch ranges" in page
    assert "node-b@x:42" in page


def test_cancel_action_cancels_through_the_service(admin_client, batch):
    response = admin_client.post(
        "/admin/jobs/batch/", {"action": "cancel_batches", "_selected_action": [batch.pk]}, follow=True
    )

    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED
    assert [str(m) for m in response.context["messages"]] == [f"{batch.pk}: cancel requested"]


def test_download_streams_the_file_as_an_attachment(admin_client, batch):
    response = admin_client.get(download_url(batch.input_file_id))

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == jsonl([chat_request("a"), chat_request("b")])
    assert response["Content-Disposition"] == 'attachment; filename="in.jsonl"'


def test_download_of_an_unknown_file_is_404(admin_client, db):
    assert admin_client.get(download_url("file-nope")).status_code == 404


def test_download_of_a_file_whose_content_is_gone_is_404(admin_client, batch):
    from django.core.files.storage import default_storage

    default_storage.delete(File.objects.get(pk=batch.input_file_id).storage_name)
    assert admin_client.get(download_url(batch.input_file_id)).status_code == 404


def test_download_is_for_staff_only(client, user, batch):
    url = download_url(batch.input_file_id)
    assert client.get(url).status_code == 302
    client.force_login(user)
    assert client.get(url)["Location"].startswith("/admin/login/")

    staff = get_user_model().objects.create_user(username="bob", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(url).status_code == 403


def test_file_list_has_download_links(admin_client, batch):
    page = admin_client.get("/admin/jobs/file/").content.decode()
    assert f'href="{download_url(batch.input_file_id)}"' in page


def test_cancel_action_needs_the_change_permission(client, batch):
    from django.contrib.auth.models import Permission

    staff = get_user_model().objects.create_user(username="viewer", password="pw", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_batch"))
    client.force_login(staff)

    assert "cancel_batches" not in client.get("/admin/jobs/batch/").content.decode()
    client.post("/admin/jobs/batch/", {"action": "cancel_batches", "_selected_action": [batch.pk]})
    batch.refresh_from_db()
    assert batch.status == "validating"


def test_a_new_api_key_is_shown_once_on_the_page_not_in_a_cookie(admin_client, user):
    from jobs.models import ApiKey, hash_api_key

    response = admin_client.post("/admin/jobs/apikey/add/", {"name": "ci", "owner": user.pk})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    api_key = ApiKey.objects.get(name="ci")
    raw_key = page.split('id="new-api-key"')[1].split('value="')[1].split('"')[0]
    assert hash_api_key(raw_key) == api_key.key_hash
    assert raw_key not in str(response.cookies)
    assert raw_key not in admin_client.get("/admin/jobs/apikey/").content.decode()
    assert raw_key not in str(admin_client.cookies)
    assert all(raw_key not in str(value) for value in admin_client.session.values())
