"""A batch's numbers equal its files when two holders overlap on it: the service
functions called directly, a takeover simulated by changing claimed_by between steps."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from batchsite.errors import Conflict, NotFound
from jobs import leases, services
from jobs.jsonl import dumps_line, output_line, request_error_line
from jobs.models import Batch, BatchResult, File

from .factories import chat_request, custom_ids, make_batch, read_jsonl

OLD = "old-host:1"
NEW = "new-host:2"


@pytest.fixture
def batch(user, chat_model):
    batch = make_batch(user, [chat_request(i) for i in "abcd"])
    Batch.objects.filter(pk=batch.pk).update(
        status="in_progress", total_requests=4, model="tiny-llama", claimed_by=OLD, heartbeat_at=timezone.now()
    )
    return batch


def row(line, custom_id, prompt_tokens=3, completion_tokens=2, error=False):
    if error:
        return (line, custom_id, True, dumps_line(request_error_line(custom_id, "bad", code="invalid_value")), 0, 0)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    body = {"object": "chat.completion", "usage": usage}
    return (line, custom_id, False, dumps_line(output_line(custom_id, body)), prompt_tokens, completion_tokens)


def take_over(batch, holder=NEW):
    Batch.objects.filter(pk=batch.pk).update(claimed_by=holder, heartbeat_at=timezone.now())


def counters(batch):
    batch.refresh_from_db()
    return batch.completed_requests, batch.failed_requests, batch.input_tokens, batch.output_tokens


def test_a_chunk_counts_only_the_rows_it_inserted(batch):
    services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(1, "a", 5, 7), row(2, "b", error=True)])
    take_over(batch)
    # The new holder runs lines 1 and 2 again (it read done_lines before the old one
    # saved) together with line 3: only line 3 is new.
    services.batch_results_save(
        batch_id=batch.pk, holder=NEW, rows=[row(1, "a", 50, 70), row(2, "b"), row(3, "c", 4, 1)]
    )
    assert counters(batch) == (2, 1, 5 + 4, 7 + 1)
    assert BatchResult.objects.filter(batch=batch).count() == 3


def test_the_old_holder_saves_nothing_after_a_takeover(batch):
    services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(1, "a")])
    take_over(batch)
    with pytest.raises(leases.LeaseLost):
        services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(2, "b"), row(3, "c")])
    assert sorted(BatchResult.objects.filter(batch=batch).values_list("line", flat=True)) == [1]
    assert counters(batch) == (1, 0, 3, 2)
    batch.refresh_from_db()
    assert batch.claimed_by == NEW


def test_counts_equal_the_files_after_overlapping_holders(batch):
    services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(1, "a", 1, 1), row(2, "b", 2, 2)])
    take_over(batch)
    services.batch_results_save(
        batch_id=batch.pk, holder=NEW, rows=[row(2, "b", 2, 2), row(3, "c", 3, 3), row(4, "d", error=True)]
    )
    with pytest.raises(leases.LeaseLost):
        services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(3, "c", 3, 3), row(4, "d", 4, 4)])
    assert services.batch_finalize(batch_id=batch.pk, final_status=Batch.Status.COMPLETED, holder=NEW) == "completed"
    batch.refresh_from_db()
    output, errors = read_jsonl(batch.output_file_id), read_jsonl(batch.error_file_id)
    assert sorted(line["custom_id"] for line in output + errors) == ["a", "b", "c", "d"]
    assert (batch.completed_requests, batch.failed_requests) == (len(output), len(errors))
    usage = [line["response"]["body"]["usage"] for line in output]
    assert batch.input_tokens == sum(u["prompt_tokens"] for u in usage) == 6
    assert batch.output_tokens == sum(u["completion_tokens"] for u in usage) == 6


# -- finalize: every transition guarded by the holder and the status it comes from --


def stored_files():
    root = Path(settings.STORAGES["default"]["OPTIONS"]["location"])
    return {path for path in root.rglob("*") if path.is_file()}


def test_a_finalize_by_a_holder_that_lost_the_lease_changes_nothing(batch):
    services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(1, "a")])
    take_over(batch)
    before = stored_files()
    assert services.batch_finalize(batch_id=batch.pk, final_status=Batch.Status.COMPLETED, holder=OLD) == "skipped"
    batch.refresh_from_db()
    assert (batch.status, batch.claimed_by, batch.finalizing_at) == ("in_progress", NEW, None)
    assert stored_files() == before
    assert File.objects.filter(purpose__in=["batch_output", "batch_error"]).count() == 0


@pytest.mark.parametrize("final_status", ["completed", "expired", "cancelled"])
def test_a_takeover_while_the_files_are_written_leaves_no_file_behind(batch, monkeypatch, final_status):
    services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(1, "a"), row(2, "b", error=True)])
    if final_status == "cancelled":
        Batch.objects.filter(pk=batch.pk).update(status="cancelling")
    write = services.file_write_lines

    def write_then_lose_the_lease(**kwargs):
        file = write(**kwargs)
        take_over(batch)
        return file

    monkeypatch.setattr(services, "file_write_lines", write_then_lose_the_lease)
    before = stored_files()
    assert services.batch_finalize(batch_id=batch.pk, final_status=final_status, holder=OLD) == "skipped"
    assert stored_files() == before
    assert File.objects.filter(purpose__in=["batch_output", "batch_error"]).count() == 0
    batch.refresh_from_db()
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.status in Batch.ACTIVE
    assert BatchResult.objects.filter(batch=batch).count() == 2


def test_a_cancel_before_finalizing_ends_the_batch_cancelled_not_completed(batch):
    services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(i, c) for i, c in enumerate("abcd", 1)])
    # The user cancels between the worker's last chunk and its finalize.
    assert services.batch_cancel(batch=batch).status == "cancelling"
    assert services.batch_finalize(batch_id=batch.pk, final_status=Batch.Status.COMPLETED, holder=OLD) == "cancelled"
    batch.refresh_from_db()
    assert (batch.status, batch.completed_at, batch.finalizing_at) == ("cancelled", None, None)
    assert batch.cancelled_at is not None
    assert len(read_jsonl(batch.output_file_id)) == batch.completed_requests == 4


def test_a_cancel_while_an_expired_batch_is_written_wins(batch, monkeypatch):
    services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(1, "a")])
    write = services.file_write_lines

    def write_then_cancel(**kwargs):
        file = write(**kwargs)
        Batch.objects.filter(pk=batch.pk, status="in_progress").update(status="cancelling")
        return file

    monkeypatch.setattr(services, "file_write_lines", write_then_cancel)
    before = stored_files()
    assert services.batch_finalize(batch_id=batch.pk, final_status=Batch.Status.EXPIRED, holder=OLD) == "cancelled"
    batch.refresh_from_db()
    assert (batch.status, batch.expired_at) == ("cancelled", None)
    # Only the cancelled batch's output is kept: the expired attempt's files are gone.
    assert len(stored_files() - before) == 1
    assert File.objects.filter(purpose__in=["batch_output", "batch_error"]).count() == 1
    assert custom_ids(read_jsonl(batch.output_file_id)) == ["a"]


def test_a_cancel_during_finalizing_is_refused_and_the_batch_completes(batch, monkeypatch):
    services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(i, c) for i, c in enumerate("abcd", 1)])
    write = services.file_write_lines
    refused = []

    def write_while_a_cancel_comes(**kwargs):
        try:
            services.batch_cancel(batch=batch)
        except Conflict as exc:
            refused.append(exc.code)
        return write(**kwargs)

    monkeypatch.setattr(services, "file_write_lines", write_while_a_cancel_comes)
    assert services.batch_finalize(batch_id=batch.pk, final_status=Batch.Status.COMPLETED, holder=OLD) == "completed"
    assert refused == ["batch_not_cancellable", "batch_not_cancellable"]
    batch.refresh_from_db()
    assert (batch.status, batch.cancelling_at) == ("completed", None)


def test_a_paused_worker_cannot_save_after_the_api_finalized_its_cancelled_batch(batch, settings):
    services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(1, "a")])
    stale = timezone.now() - timedelta(seconds=settings.VLLM_BATCH["STALE_BATCH_SECONDS"] + 5)
    Batch.objects.filter(pk=batch.pk).update(heartbeat_at=stale)
    assert services.batch_cancel(batch=batch).status == "cancelled"
    with pytest.raises(leases.LeaseLost):
        services.batch_results_save(batch_id=batch.pk, holder=OLD, rows=[row(2, "b")])
    assert services.batch_finalize(batch_id=batch.pk, final_status=Batch.Status.COMPLETED, holder=OLD) == "skipped"
    batch.refresh_from_db()
    assert batch.status == "cancelled"
    assert custom_ids(read_jsonl(batch.output_file_id)) == ["a"]
    assert batch.completed_requests == 1


# -- a file in use is never deleted, from the API or the admin --------------------


def test_a_batch_is_not_created_on_a_file_deleted_since_it_was_read(user, chat_model):
    batch = make_batch(user, [chat_request("a")])
    Batch.objects.filter(pk=batch.pk).update(status="completed")
    file = File.objects.get(pk=batch.input_file_id)
    services.file_delete(file=File.objects.get(pk=file.pk))
    with pytest.raises(NotFound):
        services.batch_create(owner=user, input_file=file, endpoint=Batch.Endpoint.CHAT)
    assert Batch.objects.filter(input_file_id=file.pk).count() == 1


def test_deleting_a_file_twice_is_not_found(user, chat_model):
    file = File.objects.get(pk=make_batch(user, [chat_request("a")]).input_file_id)
    Batch.objects.update(status="completed")
    services.file_delete(file=file)
    with pytest.raises(NotFound):
        services.file_delete(file=file)


def test_the_admin_refuses_to_delete_the_input_of_a_running_batch(admin_client, batch):
    url = reverse("admin:jobs_file_delete", args=[batch.input_file_id])
    page = admin_client.get(url).content.decode()
    assert f"is the input of batch {batch.pk} (in_progress); cancel the batch first." in page
    admin_client.post(url, {"post": "yes"})
    bulk = admin_client.post(
        reverse("admin:jobs_file_changelist"),
        {"action": "delete_selected", "_selected_action": [batch.input_file_id], "post": "yes"},
    )
    assert "cancel the batch first" in bulk.content.decode()
    assert File.objects.filter(pk=batch.input_file_id).exists()
    assert services.file_open(File.objects.get(pk=batch.input_file_id)).read()


def test_the_admin_deletes_a_file_no_batch_runs_on_with_its_content(
    admin_client, batch, django_capture_on_commit_callbacks
):
    Batch.objects.filter(pk=batch.pk).update(status="completed")
    file = File.objects.get(pk=batch.input_file_id)
    path = Path(settings.STORAGES["default"]["OPTIONS"]["location"]) / file.storage_name
    assert path.exists()
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(reverse("admin:jobs_file_delete", args=[file.pk]), {"post": "yes"})
    assert not File.objects.filter(pk=file.pk).exists()
    assert not path.exists()
