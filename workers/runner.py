"""Runs one batch in a worker: claim, validate, feed the engine, save per chunk, finalize.

Results and progress are saved together, one transaction per chunk, so a crash
loses at most the chunk in flight and a restarted batch resumes with the requests
that have no saved result. The output and error files are written from the saved
results when the batch ends, each custom_id exactly once.
"""

import json
import logging
import os
import socket
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.core.files.base import File as DjangoFile
from django.core.files.storage import default_storage
from django.db import close_old_connections, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from jobs.jsonl import dumps_line
from jobs.models import Batch, BatchResult, File
from jobs.validation import iter_request_lines, validate_input

from . import params as P
from . import responses, state
from .engine_types import EngineDead, EngineError, GenerateItem
from .logs import batch_context
from .models import RegisteredModel

logger = logging.getLogger(__name__)


def worker_name():
    return f"{socket.gethostname()}:{os.getpid()}"


def _stale_before():
    return timezone.now() - timedelta(seconds=settings.VLLM_BATCH["STALE_BATCH_SECONDS"])


def holder_is_dead_here(holder):
    """True when the lease holder was a process on this host that no longer runs."""
    import psutil

    host, _, pid = holder.rpartition(":")
    if host.rsplit(":", 1)[-1] != socket.gethostname() or not pid.isdigit():
        return False
    return not psutil.pid_exists(int(pid))


def reap_dead_leases():
    """Frees the leases of dead local workers at once, instead of waiting for them to go stale."""
    freed = []
    for batch_id, holder in (
        Batch.objects.filter(status__in=Batch.ACTIVE).exclude(claimed_by="").values_list("pk", "claimed_by")
    ):
        if holder_is_dead_here(holder) and Batch.objects.filter(pk=batch_id, claimed_by=holder).update(
            claimed_by="", heartbeat_at=None
        ):
            logger.warning("freed the lease of dead worker %s on batch %s", holder, batch_id)
            freed.append(batch_id)
    return freed


def lease_is_live(batch):
    if not batch.claimed_by or batch.heartbeat_at is None or batch.heartbeat_at < _stale_before():
        return False
    return not holder_is_dead_here(batch.claimed_by)


def claim(batch_id, holder):
    """Takes the batch's lease if it is free, ours, or stale. Returns the batch or None."""
    claimed = (
        Batch.objects.filter(pk=batch_id, status__in=Batch.ACTIVE)
        .filter(Q(claimed_by="") | Q(claimed_by=holder) | Q(heartbeat_at__lt=_stale_before()) | Q(heartbeat_at=None))
        .update(claimed_by=holder, heartbeat_at=timezone.now())
    )
    return Batch.objects.get(pk=batch_id) if claimed else None


def release(batch_id, holder):
    Batch.objects.filter(pk=batch_id, claimed_by=holder).update(claimed_by="", heartbeat_at=None)


class LeaseKeeper:
    """Keeps the batch's heartbeat fresh from a thread, also while a model loads."""

    def __init__(self, batch_id, holder, interval=None):
        self.batch_id = batch_id
        self.holder = holder
        self.interval = interval or max(1.0, settings.VLLM_BATCH["STALE_BATCH_SECONDS"] / 4)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lease-{batch_id}", daemon=True)

    def _run(self):
        while not self.stop_event.wait(self.interval):
            try:
                Batch.objects.filter(pk=self.batch_id, claimed_by=self.holder).update(heartbeat_at=timezone.now())
            except Exception:
                logger.exception("lease heartbeat failed for %s", self.batch_id)
            finally:
                close_old_connections()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=5)


# -- validation ---------------------------------------------------------------


def model_problem(name, endpoint):
    model = RegisteredModel.objects.filter(name=name, is_active=True).first()
    if model is None:
        return "model_not_found", f"The model '{name}' does not exist or is not registered on this server."
    wants_pooling = endpoint == Batch.Endpoint.EMBEDDINGS
    if model.serves_embeddings != wants_pooling:
        kind = "an embedding" if model.serves_embeddings else "a generative"
        return "invalid_value", f"The model '{name}' is {kind} model and cannot serve {endpoint}."
    return None


def validate_batch(batch):
    """Moves a validating batch to in_progress, or to failed with errors.data."""
    with default_storage.open(batch.input_file.storage_name, "rb") as stream:
        result = validate_input(stream, batch.endpoint, lambda name: model_problem(name, batch.endpoint))
    now = timezone.now()
    if not result.ok:
        Batch.objects.filter(pk=batch.pk, status=Batch.Status.VALIDATING).update(
            status=Batch.Status.FAILED,
            errors=result.errors,
            failed_at=now,
            total_requests=0,
            claimed_by="",
            heartbeat_at=None,
            updated_at=now,
        )
        logger.info("batch %s failed validation: %d errors", batch.pk, result.error_count)
        return False
    Batch.objects.filter(pk=batch.pk, status=Batch.Status.VALIDATING).update(
        status=Batch.Status.IN_PROGRESS,
        total_requests=result.total,
        model=result.model,
        in_progress_at=now,
        updated_at=now,
    )
    return True


# -- reading the input --------------------------------------------------------


def iter_pending_requests(batch, done_lines):
    """Yields (line, request dict) for the requests without a saved result."""
    with default_storage.open(batch.input_file.storage_name, "rb") as stream:
        for number, raw in iter_request_lines(stream):
            if number not in done_lines:
                yield number, json.loads(raw)


# -- saving -------------------------------------------------------------------


class ChunkWriter:
    """Collects finished requests and saves them with the batch's counters."""

    def __init__(self, batch, holder):
        self.batch = batch
        self.holder = holder
        self.rows = []
        self.input_tokens = self.output_tokens = 0
        self.last_flush = time.monotonic()
        self.flush_seconds = 2.0
        self.chunk_size = settings.VLLM_BATCH["CHUNK_SIZE"]

    def add(self, line, custom_id, payload, is_error):
        if not is_error:
            i, o = responses.usage_of(payload["response"]["body"])
            self.input_tokens += i
            self.output_tokens += o
        self.rows.append((line, custom_id, is_error, dumps_line(payload)))

    def due(self):
        return len(self.rows) >= self.chunk_size or (
            self.rows and time.monotonic() - self.last_flush > self.flush_seconds
        )

    def flush(self):
        """Saves the chunk; returns the batch's status afterwards (cancel, expiry)."""
        rows, self.rows = self.rows, []
        input_tokens, output_tokens = self.input_tokens, self.output_tokens
        self.input_tokens = self.output_tokens = 0
        self.last_flush = time.monotonic()
        failed = sum(1 for r in rows if r[2])
        with transaction.atomic():
            _insert_results(self.batch.pk, rows)
            Batch.objects.filter(pk=self.batch.pk).update(
                completed_requests=F("completed_requests") + (len(rows) - failed),
                failed_requests=F("failed_requests") + failed,
                input_tokens=F("input_tokens") + input_tokens,
                output_tokens=F("output_tokens") + output_tokens,
                heartbeat_at=timezone.now(),
                updated_at=timezone.now(),
            )
        return Batch.objects.values_list("status", "expires_at", "claimed_by").get(pk=self.batch.pk)


RESULT_COLUMNS = ("batch", "line", "custom_id", "is_error", "text", "created_at")


def _insert_results(batch_id, rows):
    """Saves (line, custom_id, is_error, text) rows; a line saved before is kept.

    Plain executemany, because this runs on the thread that feeds the engine:
    bulk_create's per-field preparation costs ~60 us a row there (0.3 s of CPU
    taken from the engine per 5000 requests), this a tenth of it."""
    meta = BatchResult._meta
    now = meta.get_field("created_at").get_db_prep_save(timezone.now(), connection)
    columns = ", ".join(connection.ops.quote_name(meta.get_field(name).column) for name in RESULT_COLUMNS)
    sql = (
        f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({columns}) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
    )
    with connection.cursor() as cursor:
        cursor.executemany(sql, [(batch_id, *row, now) for row in rows])


# -- running ------------------------------------------------------------------


def _generate_items(requests, endpoint, writer, parts):
    """Turns pending requests into engine items; requests that fail parameter
    checks go straight to the writer as errors."""
    chat = endpoint == Batch.Endpoint.CHAT
    for line, request in requests:
        body = request["body"]
        custom_id = request["custom_id"]
        try:
            sampling = P.sampling_kwargs(body, endpoint)
            prompts = [P.chat_messages(body)] if chat else P.completion_prompts(body)
        except P.ParamError as exc:
            writer.add(
                line,
                custom_id,
                responses.request_error_line(
                    custom_id, exc.message, code=exc.code, param=f"body.{exc.param}" if exc.param else None
                ),
                True,
            )
            continue
        parts[line] = {"custom_id": custom_id, "body": body, "results": [None] * len(prompts), "left": len(prompts)}
        options = {
            key: body[key]
            for key in ("chat_template_kwargs", "add_generation_prompt", "continue_final_message", "tools")
            if key in body
        }
        for index, prompt in enumerate(prompts):
            if chat:
                yield _item((line, index), sampling, chat=prompt, chat_options=options)
            else:
                yield _item((line, index), sampling, prompt=prompt)


def _item(key, sampling, **kwargs):
    return GenerateItem(key=key, sampling=sampling, **kwargs)


def _finish_generation(line, entry, endpoint, model_name, writer):
    custom_id = entry["custom_id"]
    failure = next((r for r in entry["results"] if isinstance(r, EngineError)), None)
    if failure is not None:
        writer.add(
            line,
            custom_id,
            responses.request_error_line(custom_id, failure.message, code=failure.code, param=failure.param),
            True,
        )
        return
    if endpoint == Batch.Endpoint.CHAT:
        body = responses.chat_completion(entry["results"][0], model_name)
    else:
        body = responses.text_completion(entry["results"], model_name)
    writer.add(line, custom_id, responses.output_line(custom_id, body), False)


def run_generation(batch, engine, writer, should_stop):
    parts = {}
    requests = iter_pending_requests(batch, writer.done_lines)
    stream = engine.generate(_generate_items(requests, batch.endpoint, writer, parts))
    try:
        for (line, index), result in stream:
            entry = parts[line]
            entry["results"][index] = result
            entry["left"] -= 1
            if entry["left"] == 0:
                del parts[line]
                _finish_generation(line, entry, batch.endpoint, engine.name, writer)
            if writer.due() and should_stop(writer.flush()):
                return False
    finally:
        stream.close()
    return True


def run_embeddings(batch, engine, writer, should_stop):
    requests = iter_pending_requests(batch, writer.done_lines)
    while True:
        chunk = []
        for line, request in requests:
            body = request["body"]
            custom_id = request["custom_id"]
            try:
                inputs, dimensions, encoding = P.embedding_request(body)
            except P.ParamError as exc:
                writer.add(
                    line,
                    custom_id,
                    responses.request_error_line(custom_id, exc.message, code=exc.code, param=f"body.{exc.param}"),
                    True,
                )
                continue
            chunk.append((line, custom_id, inputs, dimensions, encoding))
            if len(chunk) >= writer.chunk_size:
                break
        if not chunk and not writer.rows:
            return True
        by_dimensions = {}
        for entry in chunk:
            by_dimensions.setdefault(entry[3], []).append(entry)
        for dimensions, entries in by_dimensions.items():
            flat = [x for entry in entries for x in entry[2]]
            vectors = engine.embed(flat, dimensions=dimensions)
            offset = 0
            for line, custom_id, inputs, _, encoding in entries:
                mine = vectors[offset : offset + len(inputs)]
                offset += len(inputs)
                failure = next((v for v in mine if isinstance(v, EngineError)), None)
                if failure is not None:
                    writer.add(
                        line,
                        custom_id,
                        responses.request_error_line(custom_id, failure.message, code=failure.code),
                        True,
                    )
                else:
                    body = responses.embedding_list(mine, engine.name, encoding)
                    writer.add(line, custom_id, responses.output_line(custom_id, body), False)
        if writer.rows and should_stop(writer.flush()):
            return False
        if not chunk:
            return True


def process_batch(batch_id, holder=None):
    """The worker's whole job for one batch, for at most one task slice.

    Returns what happened, for the task result: "completed", "failed", "cancelled",
    "expired", "continued" (slice used up, continuation queued) or "skipped"."""
    holder = holder or worker_name()
    with batch_context(batch_id):
        close_old_connections()
        batch = claim(batch_id, holder)
        if batch is None:
            return "skipped"
        try:
            with LeaseKeeper(batch.pk, holder), state.processing(batch.pk):
                return _process_claimed(batch, holder)
        finally:
            release(batch_id, holder)
            close_old_connections()


def _process_claimed(batch, holder):
    from . import engine_host
    from .lifecycle import stop_requested
    from .queueing import enqueue_batch

    if batch.status == Batch.Status.VALIDATING:
        if timezone.now() >= batch.expires_at:
            return batch_finalize(batch_id=batch.pk, final_status=Batch.Status.EXPIRED, holder=holder)
        valid = validate_batch(batch)
        batch.refresh_from_db()
        # A cancel that arrived during validation left the batch cancelling, not failed:
        # it is finalized below rather than dropped with no lease.
        if not valid and batch.status == Batch.Status.FAILED:
            return "failed"
    if batch.status == Batch.Status.CANCELLING:
        return batch_finalize(batch_id=batch.pk, final_status=Batch.Status.CANCELLED, holder=holder)
    if batch.status == Batch.Status.FINALIZING:
        return batch_finalize(batch_id=batch.pk, final_status=Batch.Status.COMPLETED, holder=holder)
    if timezone.now() >= batch.expires_at:
        return batch_finalize(batch_id=batch.pk, final_status=Batch.Status.EXPIRED, holder=holder)

    model = RegisteredModel.objects.filter(name=batch.model, is_active=True).first()
    if model is None:
        batch_fail(
            batch_id=batch.pk, code="model_not_found", message=f"The model '{batch.model}' is no longer registered."
        )
        return "failed"

    def wanted_back():
        # Checked about once a second while the batch waits for the engine.
        if stop_requested.is_set() or state.operator_handback_requested():
            return True
        return Batch.objects.filter(pk=batch.pk, status=Batch.Status.CANCELLING).exists()

    try:
        with engine_host.engine_for(model, interrupted=wanted_back) as engine:
            finished, why = _run_on_engine(batch, holder, engine)
    except engine_host.Interrupted:
        finished, why = False, "continued"
    except EngineDead as exc:
        return _after_engine_death(batch, holder, exc)
    if why == "lost_lease":
        logger.warning("batch %s was taken over by another worker", batch.pk)
        return "skipped"
    if why == "cancelled":
        return batch_finalize(batch_id=batch.pk, final_status=Batch.Status.CANCELLED, holder=holder)
    if why == "expired":
        return batch_finalize(batch_id=batch.pk, final_status=Batch.Status.EXPIRED, holder=holder)
    if why == "continued" and not finished:
        release(batch.pk, holder)
        enqueue_batch(batch.pk)
        return "continued"
    return batch_finalize(batch_id=batch.pk, final_status=Batch.Status.COMPLETED, holder=holder)


def _run_on_engine(batch, holder, engine):
    """Runs the batch's pending requests until done or told to stop; returns
    (finished, why it stopped or None)."""
    from .lifecycle import stop_requested

    writer = ChunkWriter(batch, holder)
    writer.done_lines = set(BatchResult.objects.filter(batch_id=batch.pk).values_list("line", flat=True))
    slice_ends = time.monotonic() + settings.VLLM_BATCH["TASK_SLICE_SECONDS"]
    outcome = {}

    def should_stop(saved):
        status, expires_at, claimed_by = saved
        if claimed_by != holder:
            outcome["why"] = "lost_lease"
        elif status == Batch.Status.CANCELLING:
            outcome["why"] = "cancelled"
        elif timezone.now() >= expires_at:
            outcome["why"] = "expired"
        elif time.monotonic() >= slice_ends or stop_requested.is_set() or state.handback_requested():
            outcome["why"] = "continued"
        return bool(outcome)

    runner = run_embeddings if batch.endpoint == Batch.Endpoint.EMBEDDINGS else run_generation
    try:
        finished = runner(batch, engine, writer, should_stop)
    except EngineDead:
        if writer.rows:
            writer.flush()  # what finished before the engine died is kept
        raise
    if finished and writer.rows:
        should_stop(writer.flush())
    return finished, outcome.get("why")


def _after_engine_death(batch, holder, exc):
    """The engine's process died under the batch: the batch goes back on the queue
    (the next attempt loads a new engine and resumes), until it has killed the
    engine MAX_ENGINE_FAILURES times; then the requests not run yet end as errors."""
    from .queueing import enqueue_batch

    Batch.objects.filter(pk=batch.pk).update(engine_failures=F("engine_failures") + 1)
    failures = Batch.objects.values_list("engine_failures", flat=True).get(pk=batch.pk)
    limit = settings.VLLM_BATCH["MAX_ENGINE_FAILURES"]
    logger.error("the engine died running batch %s (failure %d of %d): %s", batch.pk, failures, limit, exc)
    if failures < limit:
        release(batch.pk, holder)
        enqueue_batch(batch.pk)
        return "continued"
    message = f"The engine failed {failures} times while running this batch; this request was not run. Last: {exc}"
    return batch_finalize(
        batch_id=batch.pk, final_status=Batch.Status.COMPLETED, holder=holder, unfinished=("engine_error", message)
    )


def batch_fail(*, batch_id, code, message):
    now = timezone.now()
    Batch.objects.filter(pk=batch_id, status__in=Batch.ACTIVE).update(
        status=Batch.Status.FAILED,
        errors=[{"code": code, "message": message, "param": None, "line": None}],
        failed_at=now,
        updated_at=now,
    )


# -- finalizing ---------------------------------------------------------------

FINAL_TIMESTAMP = {
    Batch.Status.COMPLETED: "completed_at",
    Batch.Status.CANCELLED: "cancelled_at",
    Batch.Status.EXPIRED: "expired_at",
}


def _write_file(batch, purpose, lines):
    """Streams lines (serialized JSON objects) into storage; returns the unsaved
    File, or None if empty. The caller saves it with the batch's final status, so
    a retried finalize never shows the user two output files."""
    import tempfile

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
        file = File(owner_id=batch.owner_id, purpose=purpose, filename=f"{batch.pk}_{purpose.split('_')[1]}.jsonl")
        file.storage_name = default_storage.save(f"{file.id[5:7]}/{file.id}.jsonl", DjangoFile(tmp))
        file.bytes = size
        file.line_count = count
        return file


EXPIRED_REQUEST = ("batch_expired", "This request could not be executed before the completion window expired.")


def _unfinished_lines(batch, done_lines, code, message):
    for _line, request in iter_pending_requests(batch, done_lines):
        yield dumps_line(responses.batch_error_line(request["custom_id"], message, code))


def batch_finalize(*, batch_id, final_status, holder=None, unfinished=None):
    """Writes the output and error files from the saved results and ends the batch.

    Requests without a result go to the error file as `unfinished` = (code,
    message) when given (always for an expired batch). Without `holder` the
    caller must first take the lease (the API does this to cancel a batch no
    worker holds); if a live worker holds it, the worker ends the batch instead
    and this returns "skipped"."""
    if final_status == Batch.Status.EXPIRED:
        unfinished = EXPIRED_REQUEST
    own_lease = holder is None
    holder = holder or f"finalizer:{worker_name()}"
    batch = claim(batch_id, holder)
    if batch is None:
        return "skipped"
    try:
        now = timezone.now()
        if final_status == Batch.Status.COMPLETED:
            Batch.objects.filter(pk=batch_id, finalizing_at=None).update(finalizing_at=now)
            Batch.objects.filter(pk=batch_id).update(status=Batch.Status.FINALIZING, updated_at=now)
        results = BatchResult.objects.filter(batch_id=batch_id).order_by("line")
        output = _write_file(
            batch,
            File.Purpose.BATCH_OUTPUT,
            results.filter(is_error=False).values_list("text", flat=True).iterator(chunk_size=2000),
        )
        error_lines = results.filter(is_error=True).values_list("text", flat=True).iterator(chunk_size=2000)
        not_run = 0
        if unfinished and batch.status != Batch.Status.VALIDATING:
            done = set(results.values_list("line", flat=True))
            not_run = batch.total_requests - len(done)

            def with_unfinished():
                yield from error_lines
                yield from _unfinished_lines(batch, done, *unfinished)

            errors = _write_file(batch, File.Purpose.BATCH_ERROR, with_unfinished())
        else:
            errors = _write_file(batch, File.Purpose.BATCH_ERROR, error_lines)
        with transaction.atomic():
            now = timezone.now()
            for file in (output, errors):
                if file is not None:
                    file.save()
            Batch.objects.filter(pk=batch_id).update(
                status=final_status,
                output_file=output,
                error_file=errors,
                failed_requests=F("failed_requests") + max(not_run, 0),
                claimed_by="",
                heartbeat_at=None,
                updated_at=now,
                **{FINAL_TIMESTAMP[final_status]: now},
            )
            BatchResult.objects.filter(batch_id=batch_id).delete()
        logger.info("batch %s %s", batch_id, final_status)
        return str(final_status)
    finally:
        if own_lease:
            release(batch_id, holder)
