"""Writes for files and batches, called by the API, admin, commands and tests."""

import logging
from datetime import timedelta

from django.conf import settings
from django.core.files.base import File as DjangoFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from batchsite.errors import ApiError, Conflict
from .models import ApiKey, Batch, File, hash_api_key

logger = logging.getLogger(__name__)

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}


def limits():
    return settings.VLLM_BATCH


def api_key_create(*, owner, name):
    """Creates a key and returns (ApiKey, raw_key); the raw key is shown once."""
    raw_key = ApiKey.generate_raw_key()
    api_key = ApiKey.objects.create(owner=owner, name=name, prefix=raw_key[:10], key_hash=hash_api_key(raw_key))
    return api_key, raw_key


def _count_lines_and_copy(source, file_id):
    """Streams `source` into storage chunk by chunk; returns (storage_name, bytes, lines)."""
    lines = 0
    size = 0
    last_byte = b"\n"
    blank_only = True
    source.seek(0)
    for chunk in source.chunks() if hasattr(source, "chunks") else iter(lambda: source.read(1 << 20), b""):
        size += len(chunk)
        lines += chunk.count(b"\n")
        if blank_only and chunk.strip():
            blank_only = False
        last_byte = chunk[-1:]
    if size and last_byte != b"\n":
        lines += 1
    source.seek(0)
    name = default_storage.save(f"{file_id[5:7]}/{file_id}.jsonl", DjangoFile(source))
    return name, size, (0 if blank_only else lines)


@transaction.atomic
def file_create(*, owner, upload, purpose, filename=None):
    """Stores an uploaded file. `upload` is any file object; it is streamed, never read whole."""
    max_bytes = limits()["MAX_UPLOAD_BYTES"]
    size = getattr(upload, "size", None)
    if size is not None and size > max_bytes:
        raise ApiError(
            f"File is too large: {size} bytes, the limit is {max_bytes} bytes.", code="file_too_large", param="file"
        )
    file = File(owner=owner, purpose=purpose, filename=(filename or getattr(upload, "name", None) or "upload.jsonl"))
    file.filename = file.filename.replace("\\", "/").rsplit("/", 1)[-1][:255] or "upload.jsonl"
    name, size, lines = _count_lines_and_copy(upload, file.id)
    if size > max_bytes or lines == 0:
        default_storage.delete(name)
        if lines == 0:
            raise ApiError(
                "The file is empty: a batch input file needs at least one request.", code="empty_file", param="file"
            )
        raise ApiError(
            f"File is too large: {size} bytes, the limit is {max_bytes} bytes.", code="file_too_large", param="file"
        )
    file.storage_name = name
    file.bytes = size
    file.line_count = lines
    file.save()
    return file


def file_delete(*, file):
    in_use = Batch.objects.filter(input_file_id=file.id, status__in=Batch.ACTIVE).exists()
    if in_use:
        raise Conflict(
            f"File {file.id} is the input of a batch that is still running; cancel the batch first.",
            code="file_in_use",
            param="file_id",
        )
    storage_name = file.storage_name
    file.delete()
    transaction.on_commit(lambda: default_storage.delete(storage_name))


def file_open(file):
    return default_storage.open(file.storage_name, "rb")


@transaction.atomic
def batch_create(*, owner, input_file, endpoint, completion_window="24h", metadata=None):
    if input_file.purpose != File.Purpose.BATCH:
        raise ApiError(
            f"File {input_file.id} has purpose '{input_file.purpose}'; a batch needs a file with purpose 'batch'.",
            code="invalid_value",
            param="input_file_id",
        )
    now = timezone.now()
    batch = Batch.objects.create(
        owner=owner,
        input_file=input_file,
        endpoint=endpoint,
        completion_window=completion_window,
        metadata=metadata,
        created_at=now,
        expires_at=now + COMPLETION_WINDOWS[completion_window],
    )
    from workers.queueing import enqueue_batch

    transaction.on_commit(lambda: enqueue_batch(batch.id))
    return batch


def batch_cancel(*, batch):
    """Asks for a cancel. The worker stops within one chunk and keeps finished results;
    a batch no worker holds is finalized here and now."""
    from workers.runner import batch_finalize, holder_is_dead_here, lease_is_live, release

    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch.pk)
        if batch.status in (Batch.Status.CANCELLING, Batch.Status.CANCELLED):
            return batch
        if batch.is_finished or batch.status == Batch.Status.FINALIZING:
            raise Conflict(f"Cannot cancel a batch with status '{batch.status}'.", code="batch_not_cancellable")
        batch.status = Batch.Status.CANCELLING
        batch.cancelling_at = timezone.now()
        batch.save(update_fields=["status", "cancelling_at", "updated_at"])
    if not lease_is_live(batch):
        if batch.claimed_by and holder_is_dead_here(batch.claimed_by):
            # The dead worker's heartbeat is still fresh, so the finalizer could not claim the batch.
            release(batch.id, batch.claimed_by)
        batch_finalize(batch_id=batch.id, final_status=Batch.Status.CANCELLED)
        batch.refresh_from_db()
    return batch
