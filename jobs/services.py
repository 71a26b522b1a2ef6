"""Writes for files and batches: the API, admin and commands call them, and so
does the worker for everything a batch goes through (validation, progress,
cancel, the engine failing, finalize with its output and error files).

jobs owns the batch's state: the worker asks for each transition here and holds
the batch's lease through jobs.leases.
"""

import contextlib
import json
import logging
import tempfile
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.base import File as DjangoFile
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import DateTimeField, F, Sum, Value
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from batchsite.errors import ApiError, Conflict, NotFound, RateLimited, TooLarge
from batchsite.sqlite_turns import write_turn

from . import leases, queueing, ranges, signals, webhooks
from .jsonl import batch_error_line, dumps_line
from .models import ApiKey, Batch, BatchResult, File, hash_api_key
from .validation import iter_request_lines, validate_input

logger = logging.getLogger(__name__)

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}


def limits():
    return settings.VLLM_BATCH


def api_key_create(*, owner, name):
    """Creates a key and returns (ApiKey, raw_key); the raw key is shown once."""
    raw_key = ApiKey.generate_raw_key()
    api_key = ApiKey.objects.create(owner=owner, name=name, prefix=raw_key[:10], key_hash=hash_api_key(raw_key))
    return api_key, raw_key


def _lock_owner(owner):
    """Serializes one owner's quota checks (a row lock on PostgreSQL; SQLite's
    transactions are IMMEDIATE, so writers queue anyway)."""
    get_user_model().objects.select_for_update().filter(pk=owner.pk).first()


def _check_storage_quota(owner, adding):
    limit = limits()["MAX_STORED_BYTES"]
    if not limit:
        return
    stored = File.objects.filter(owner=owner).aggregate(total=Sum("bytes"))["total"] or 0
    if stored + adding > limit:
        raise TooLarge(
            f"Storage quota exceeded: you store {stored} bytes and this file has {adding}; the limit is "
            f"{limit} bytes per user. Delete files you no longer need.",
            code="storage_quota_exceeded",
            param="file",
        )


def _check_open_batches(owner):
    limit = limits()["MAX_OPEN_BATCHES"]
    if limit and Batch.objects.filter(owner=owner, status__in=Batch.ACTIVE).count() >= limit:
        raise RateLimited(
            f"You have {limit} batches that have not finished, the most allowed at once; "
            "wait for one to finish or cancel one.",
            retry_after=60,
            code="open_batches_limit",
        )


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
    return _store(file_id, source), size, (0 if blank_only else lines)


def _store(file_id, stream):
    """Saves a file's content under a name made from its id, never from a request."""
    return default_storage.save(f"{file_id[5:7]}/{file_id}.jsonl", DjangoFile(stream))


def file_create(*, owner, upload, purpose, filename=None, expires_after_seconds=None):
    """Stores an uploaded file. `upload` is any file object; it is streamed, never read whole.

    The copy runs outside any transaction (on SQLite one would hold the database's
    write lock for the whole copy); only the row is saved in one."""
    max_bytes = limits()["MAX_UPLOAD_BYTES"]
    size = getattr(upload, "size", None)
    if size is not None and size > max_bytes:
        raise ApiError(
            f"File is too large: {size} bytes, the limit is {max_bytes} bytes.", code="file_too_large", param="file"
        )
    _check_storage_quota(owner, size or 0)
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
    if expires_after_seconds:
        file.expires_at = file.created_at + timedelta(seconds=expires_after_seconds)
    try:
        with transaction.atomic():
            _lock_owner(owner)
            _check_storage_quota(owner, size)
            file.save()
    except BaseException:
        default_storage.delete(name)
        raise
    return file


@transaction.atomic
def file_delete(*, file):
    """Deletes the file's row and, once that is committed, its content; refused
    while the file is the input of an unfinished batch.

    The File row is locked first, as batch_create locks it (on SQLite the
    transaction holds the write lock), so no batch can start on the file between
    the check and the delete."""
    if not _lock_file(file.pk):
        raise NotFound(f"No such File object: {file.pk}", param="file_id")
    running = _file_running_batches(file.pk).first()
    if running is not None:
        raise Conflict(
            f"File {file.id} is the input of batch {running.pk}, which is still running; cancel the batch first.",
            code="file_in_use",
            param="file_id",
        )
    storage_name = file.storage_name
    file.delete()
    transaction.on_commit(lambda: default_storage.delete(storage_name))


def _lock_file(file_id):
    """Locks the File row for the transaction; False when it is gone."""
    return bool(list(File.objects.select_for_update().filter(pk=file_id).values_list("pk", flat=True)))


def _file_running_batches(file_id):
    return Batch.objects.filter(input_file_id=file_id, status__in=Batch.ACTIVE).order_by("created_at")


def files_delete_expired(*, now=None, limit=1000):
    """Deletes up to `limit` files past their expires_at, as file_delete does; one
    that still feeds an unfinished batch waits for a later run. Returns how many went."""
    now = now or timezone.now()
    deleted = 0
    for file in File.objects.filter(expires_at__lte=now).order_by("expires_at")[:limit]:
        try:
            with transaction.atomic():
                file_delete(file=file)
        except (Conflict, NotFound):
            continue
        deleted += 1
    if deleted:
        logger.info("deleted %d expired files", deleted)
    return deleted


def file_open(file):
    return default_storage.open(file.storage_name, "rb")


def file_write_lines(*, owner_id, purpose, filename, lines):
    """Streams lines (serialized JSON objects) into storage; returns the unsaved
    File, or None if there are none. The caller saves it with the batch's final
    status, so a retried finalize never shows the user two output files."""
    count = 0
    with tempfile.TemporaryFile() as tmp:
        for text in lines:
            tmp.write(text.encode("utf-8"))
            tmp.write(b"\n")
            count += 1
        if not count:
            return None
        size = tmp.tell()
        tmp.seek(0)
        file = File(owner_id=owner_id, purpose=purpose, filename=filename)
        file.storage_name = _store(file.id, tmp)
        file.bytes = size
        file.line_count = count
        return file


@transaction.atomic
def batch_create(*, owner, input_file, endpoint, completion_window="24h", metadata=None):
    if input_file.purpose != File.Purpose.BATCH:
        raise ApiError(
            f"File {input_file.id} has purpose '{input_file.purpose}'; a batch needs a file with purpose 'batch'.",
            code="invalid_value",
            param="input_file_id",
        )
    _lock_owner(owner)
    if not _lock_file(input_file.pk):
        # Deleted since the caller read it; the lock keeps file_delete out until the batch is saved.
        raise NotFound(f"No such File object: {input_file.pk}", param="input_file_id")
    _check_open_batches(owner)
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
    transaction.on_commit(lambda: queueing.enqueue_batch(batch.id))
    return batch


def batch_cancel(*, batch):
    """Asks for a cancel. The worker stops within one chunk and keeps finished results;
    a batch no worker holds is finalized here and now."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch.pk)
        if batch.status in (Batch.Status.CANCELLING, Batch.Status.CANCELLED):
            return batch
        if batch.is_finished or batch.status == Batch.Status.FINALIZING:
            raise Conflict(f"Cannot cancel a batch with status '{batch.status}'.", code="batch_not_cancellable")
        batch.status = Batch.Status.CANCELLING
        batch.cancelling_at = timezone.now()
        batch.save(update_fields=["status", "cancelling_at", "updated_at"])
    if not leases.lease_is_live(batch):
        if batch.claimed_by and leases.holder_is_dead_here(batch.claimed_by):
            # The dead worker's heartbeat is still fresh, so the finalizer could not claim the batch.
            leases.release(batch.id, batch.claimed_by)
        batch_finalize(batch_id=batch.id, final_status=Batch.Status.CANCELLED)
        batch.refresh_from_db()
    return batch


# -- what the worker asks for while it runs a batch -----------------------------


def batch_pending_requests(batch, done_lines):
    """Yields (line, request dict) for the input's requests without a saved result."""
    with file_open(batch.input_file) as stream:
        for number, raw in iter_request_lines(stream):
            if number not in done_lines:
                yield number, json.loads(raw)


def batch_validate(*, batch, model_problem, holder=None):
    """Moves a validating batch to in_progress, or to failed with errors.data.

    `model_problem(name)` returns None when the model may serve the batch's
    endpoint, else (code, message). With `holder`, only while it holds the lease
    (else leases.LeaseLost)."""
    with file_open(batch.input_file) as stream:
        result = validate_input(stream, batch.endpoint, model_problem)
    now = timezone.now()
    validating = Batch.objects.filter(pk=batch.pk, status=Batch.Status.VALIDATING)
    if holder is not None:
        validating = validating.filter(claimed_by=holder)
    if not result.ok:
        changed = validating.update(
            status=Batch.Status.FAILED,
            errors=result.errors,
            failed_at=now,
            total_requests=0,
            claimed_by="",
            heartbeat_at=None,
            updated_at=now,
        )
        logger.info("batch %s failed validation: %d errors", batch.pk, result.error_count)
        if changed:
            _ended(batch.pk)
        else:
            _check_holder(batch.pk, holder)
        return False
    changed = validating.update(
        status=Batch.Status.IN_PROGRESS,
        total_requests=result.total,
        model=result.model,
        in_progress_at=now,
        progress_at=Now(),
        updated_at=now,
    )
    if not changed:
        _check_holder(batch.pk, holder)
    return True


def _check_holder(batch_id, holder):
    """Raises leases.LeaseLost when `holder` (if any) no longer holds the batch's lease."""
    if holder is not None and not Batch.objects.filter(pk=batch_id, claimed_by=holder).exists():
        raise leases.LeaseLost(batch_id, holder)


def batch_results_save(*, batch_id, holder, rows, in_ranges=False):
    """Saves finished requests, (line, custom_id, is_error, output line, input
    tokens, output tokens) each, with the batch's counters in one transaction;
    returns (status, expires_at, claimed_by) afterwards, so the worker sees a
    cancel or the expiry.

    Only rows inserted now are counted, in requests and in usage: a line saved
    before (by this holder's crashed attempt or by a worker that took the batch
    over) is neither replaced nor counted twice. The counters are updated only
    while `holder` holds the lease; when it no longer does, nothing of the chunk
    is saved and leases.LeaseLost is raised. With `in_ranges` (a split batch,
    jobs.ranges) it is the lines' ranges the holder must hold, not the batch's
    lease, and a range is marked done with its last result.

    On SQLite the commit takes the writers' turn alone, so a webhook's INSERT that
    arrives meanwhile goes right after it (batchsite.sqlite_turns)."""
    lines = [row[0] for row in rows]
    with write_turn(exclusive=True), transaction.atomic():
        held = ranges.check_held(batch_id, holder, lines) if in_ranges else None
        inserted = _insert_results(batch_id, rows)
        new = [row for row in rows if row[0] in inserted]
        failed = sum(1 for row in new if row[2])
        active = Batch.objects.filter(pk=batch_id, status__in=Batch.ACTIVE)
        lease = {} if in_ranges else {"heartbeat_at": Now()}
        changed = (active if in_ranges else active.filter(claimed_by=holder)).update(
            completed_requests=F("completed_requests") + (len(new) - failed),
            failed_requests=F("failed_requests") + failed,
            input_tokens=F("input_tokens") + sum(row[4] for row in new),
            output_tokens=F("output_tokens") + sum(row[5] for row in new),
            progress_at=Now(),
            updated_at=Now(),
            **lease,
        )
        if not changed:
            raise leases.LeaseLost(batch_id, holder)
        if in_ranges:
            ranges.mark_done(batch_id, holder, held, lines)
    return Batch.objects.values_list("status", "expires_at", "claimed_by").get(pk=batch_id)


RESULT_COLUMNS = ("batch", "line", "custom_id", "is_error", "text", "created_at")
INSERT_ROWS_PER_STATEMENT = 500


def _insert_results(batch_id, rows):
    """Saves (line, custom_id, is_error, text, ...) rows; a line saved before is
    kept. Returns the set of lines inserted now.

    Raw multi-row INSERTs, because this runs on the thread that feeds the engine:
    bulk_create's per-field preparation costs ~60 us a row there (0.3 s of CPU
    taken from the engine per 5000 requests), this a tenth of it. RETURNING
    (SQLite >= 3.35, PostgreSQL) names the rows the conflict clause did not drop."""
    meta = BatchResult._meta
    quote = connection.ops.quote_name
    now = meta.get_field("created_at").get_db_prep_save(timezone.now(), connection)
    columns = ", ".join(quote(meta.get_field(name).column) for name in RESULT_COLUMNS)
    inserted = set()
    with connection.cursor() as cursor:
        for start in range(0, len(rows), INSERT_ROWS_PER_STATEMENT):
            part = rows[start : start + INSERT_ROWS_PER_STATEMENT]
            values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(part))
            cursor.execute(
                f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES {values} "
                f"ON CONFLICT DO NOTHING RETURNING {quote(meta.get_field('line').column)}",
                [value for row in part for value in (batch_id, *row[:4], now)],
            )
            inserted.update(line for (line,) in cursor.fetchall())
    return inserted


def batch_fail(*, batch_id, code, message, holder=None):
    """Ends an active batch as failed; with `holder`, only while it holds the lease."""
    now = timezone.now()
    active = Batch.objects.filter(pk=batch_id, status__in=Batch.ACTIVE)
    if holder is not None:
        active = active.filter(claimed_by=holder)
    changed = active.update(
        status=Batch.Status.FAILED,
        errors=[{"code": code, "message": message, "param": None, "line": None}],
        failed_at=now,
        claimed_by="",
        heartbeat_at=None,
        updated_at=now,
    )
    if changed:
        _ended(batch_id)


def batch_engine_failed(*, batch_id):
    """Counts one more death of the engine under the batch; returns the count."""
    Batch.objects.filter(pk=batch_id).update(engine_failures=F("engine_failures") + 1)
    return Batch.objects.values_list("engine_failures", flat=True).get(pk=batch_id)


def _ended(batch_id):
    """The batch has just reached a final status (callers call this once, when their
    update changed the row): queue its completion webhook, and send batch_finished
    once the row is committed. Never lets the batch's own end fail."""
    try:
        webhooks.batch_ended(batch_id)
    except Exception:
        logger.exception("batch %s: could not queue its webhook", batch_id)
    transaction.on_commit(lambda: _send_finished(batch_id))


def _send_finished(batch_id):
    for receiver, result in signals.batch_finished.send_robust(sender=Batch, batch_id=batch_id):
        if isinstance(result, Exception):
            logger.error("batch %s: batch_finished receiver %r failed: %r", batch_id, receiver, result)


# -- failed attempts: poison batches and stuck workers ---------------------------

RETRY_SECONDS = 10


def batch_attempt_count(*, batch_id, reason):
    """Counts one failed attempt on the batch (an unexpected error, a stuck worker); returns the count."""
    Batch.objects.filter(pk=batch_id).update(
        attempts=F("attempts") + 1, last_attempt_error=reason[:4000], updated_at=timezone.now()
    )
    return Batch.objects.values_list("attempts", flat=True).get(pk=batch_id)


def batch_attempts_used_up(batch):
    return batch.attempts >= settings.VLLM_BATCH["MAX_BATCH_ATTEMPTS"]


def batch_attempt_failed(*, batch_id, holder, reason):
    """An attempt at the batch raised something that is not a request's own error.

    Below VLLM_BATCH_MAX_BATCH_ATTEMPTS the batch is queued again after a backoff
    (RETRY_SECONDS doubling), never at once; at the limit it ends with the reason
    (batch_give_up). Returns what the task reports: "retrying" or the final status."""
    attempts = batch_attempt_count(batch_id=batch_id, reason=reason)
    limit = settings.VLLM_BATCH["MAX_BATCH_ATTEMPTS"]
    logger.error("batch %s: attempt %d of %d failed: %s", batch_id, attempts, limit, reason)
    if attempts >= limit:
        return batch_give_up(batch_id=batch_id, holder=holder)
    retry_at = timezone.now() + timedelta(seconds=RETRY_SECONDS * 2 ** (attempts - 1))
    Batch.objects.filter(pk=batch_id).update(retry_at=retry_at)
    leases.release(batch_id, holder)
    queueing.enqueue_batch_at(batch_id, retry_at)
    return "retrying"


def batch_give_up(*, batch_id, holder):
    """Ends a batch whose attempts are used up: `failed` with the reason in `errors`
    while validating; otherwise `completed` with the finished results kept and the
    requests not run in the error file (code `batch_failed`)."""
    batch = Batch.objects.get(pk=batch_id)
    message = f"The batch failed {batch.attempts} times and was given up. Last: {batch.last_attempt_error}"
    if batch.status == Batch.Status.VALIDATING:
        now = timezone.now()
        changed = Batch.objects.filter(pk=batch_id, status=Batch.Status.VALIDATING).update(
            status=Batch.Status.FAILED,
            errors=[{"code": "batch_failed", "message": message, "param": None, "line": None}],
            failed_at=now,
            claimed_by="",
            heartbeat_at=None,
            updated_at=now,
        )
        if changed:
            _ended(batch_id)
        return str(Batch.Status.FAILED)
    final = Batch.Status.CANCELLED if batch.status == Batch.Status.CANCELLING else Batch.Status.COMPLETED
    try:
        return batch_finalize(
            batch_id=batch_id, final_status=final, holder=holder, unfinished=("batch_failed", message)
        )
    except Exception:
        # Writing the files is what keeps failing: the batch must still end.
        logger.exception("batch %s: finalize failed; ending it as failed", batch_id)
        batch_fail(batch_id=batch_id, code="batch_failed", message=message, holder=holder)
        leases.release(batch_id, holder)
        return str(Batch.Status.FAILED)


FINAL_TIMESTAMP = {
    Batch.Status.COMPLETED: "completed_at",
    Batch.Status.CANCELLED: "cancelled_at",
    Batch.Status.EXPIRED: "expired_at",
}

EXPIRED_REQUEST = ("batch_expired", "This request could not be executed before the completion window expired.")


def _unfinished_lines(batch, done_lines, code, message):
    for _line, request in batch_pending_requests(batch, done_lines):
        yield dumps_line(batch_error_line(request["custom_id"], message, code))


def _result_file(batch, purpose, lines):
    return file_write_lines(
        owner_id=batch.owner_id, purpose=purpose, filename=f"{batch.pk}_{purpose.split('_')[1]}.jsonl", lines=lines
    )


FINALIZED_FROM = {
    Batch.Status.COMPLETED: (Batch.Status.FINALIZING,),
    Batch.Status.CANCELLED: (Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS, Batch.Status.CANCELLING),
    Batch.Status.EXPIRED: (Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS),
}


def batch_finalize(*, batch_id, final_status, holder=None, unfinished=None):
    """Writes the output and error files from the saved results and ends the batch.

    Requests without a result go to the error file as `unfinished` = (code,
    message) when given (always for an expired batch). Without `holder` the
    caller must first take the lease (the API does this to cancel a batch no
    worker holds); if a live worker holds it, the worker ends the batch instead
    and this returns "skipped".

    Each status change is a conditional update on the holder and the statuses it
    may come from, so a holder whose lease was taken over changes nothing (its
    files are deleted, "skipped"), and a cancel wins over the end the worker was
    heading for: a cancel that arrives before `finalizing` ends the batch
    `cancelled` (batch_cancel refuses one during `finalizing`, as nothing is left to stop)."""
    own_lease = holder is None
    holder = holder or f"finalizer:{leases.holder_name()}"
    if leases.claim(batch_id, holder) is None:
        return "skipped"
    try:
        # The API finalizes in a request: its lease stays fresh while the files are written.
        with leases.LeaseKeeper(batch_id, holder) if own_lease else contextlib.nullcontext():
            outcome = _finalize_once(batch_id, final_status, holder, unfinished)
            if outcome == CANCELLED_MEANWHILE:
                keep = unfinished if final_status != Batch.Status.EXPIRED else None
                outcome = _finalize_once(batch_id, Batch.Status.CANCELLED, holder, keep)
            return "skipped" if outcome == CANCELLED_MEANWHILE else outcome
    finally:
        if own_lease:
            leases.release(batch_id, holder)


CANCELLED_MEANWHILE = "cancelled meanwhile"


def _finalize_once(batch_id, final_status, holder, unfinished):
    """One try at ending the batch as `final_status`; returns it, "skipped" (the
    lease is lost or the batch already ended), or CANCELLED_MEANWHILE (a cancel
    arrived: the caller finalizes again as cancelled)."""
    if final_status == Batch.Status.EXPIRED:
        unfinished = EXPIRED_REQUEST
    held = Batch.objects.filter(pk=batch_id, claimed_by=holder)
    if final_status == Batch.Status.COMPLETED:
        now = timezone.now()
        moved = held.filter(status__in=(Batch.Status.IN_PROGRESS, Batch.Status.FINALIZING)).update(
            status=Batch.Status.FINALIZING,
            finalizing_at=Coalesce(F("finalizing_at"), Value(now, output_field=DateTimeField())),
            updated_at=now,
        )
        if not moved:
            return _why_not_finalized(batch_id, holder)
    batch = Batch.objects.get(pk=batch_id)
    results = BatchResult.objects.filter(batch_id=batch_id).order_by("line")
    written = []
    try:
        output = _result_file(
            batch,
            File.Purpose.BATCH_OUTPUT,
            results.filter(is_error=False).values_list("text", flat=True).iterator(chunk_size=2000),
        )
        written.append(output)
        error_lines = results.filter(is_error=True).values_list("text", flat=True).iterator(chunk_size=2000)
        not_run = 0
        if unfinished and batch.status != Batch.Status.VALIDATING:
            done = set(results.values_list("line", flat=True))
            not_run = batch.total_requests - len(done)

            def with_unfinished():
                yield from error_lines
                yield from _unfinished_lines(batch, done, *unfinished)

            errors = _result_file(batch, File.Purpose.BATCH_ERROR, with_unfinished())
        else:
            errors = _result_file(batch, File.Purpose.BATCH_ERROR, error_lines)
        written.append(errors)
        with transaction.atomic():
            now = timezone.now()
            changed = held.filter(status__in=FINALIZED_FROM[final_status]).update(
                status=final_status,
                output_file_id=output.pk if output else None,
                error_file_id=errors.pk if errors else None,
                failed_requests=F("failed_requests") + max(not_run, 0),
                claimed_by="",
                heartbeat_at=None,
                updated_at=now,
                **{FINAL_TIMESTAMP[final_status]: now},
            )
            if changed:
                for file in (output, errors):
                    if file is not None:
                        file.save()
                BatchResult.objects.filter(batch_id=batch_id).delete()
    except BaseException:
        _discard(written)
        raise
    if not changed:
        _discard(written)
        return _why_not_finalized(batch_id, holder)
    logger.info("batch %s %s", batch_id, final_status)
    _ended(batch_id)
    return str(final_status)


def _why_not_finalized(batch_id, holder):
    status = Batch.objects.filter(pk=batch_id, claimed_by=holder).values_list("status", flat=True).first()
    if status == Batch.Status.CANCELLING:
        return CANCELLED_MEANWHILE
    logger.warning("batch %s: %s no longer holds it (status %s); not finalized", batch_id, holder, status)
    return "skipped"


def _discard(files):
    """Deletes the content of files written for a finalize that did not happen."""
    for file in files:
        if file is not None:
            default_storage.delete(file.storage_name)
