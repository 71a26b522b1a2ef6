"""Runs one batch in a worker: claim, validate, feed the engine, save per chunk, finalize.

jobs owns the batch: its lease (jobs.leases), every change of its status and its
files (jobs.services). This module decides, from what the engine returns, what
to ask jobs for. Results and progress are saved together, one transaction per
chunk, so a crash loses at most the chunk in flight and a restarted batch resumes
with the requests that have no saved result.
"""

import itertools
import json
import logging
import os
import queue
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from jobs import leases, queueing, ranges
from jobs import selectors as job_selectors
from jobs import services as job_services
from jobs.jsonl import dumps_line, output_line, request_error_line
from jobs.models import Batch

from . import selectors, state
from .bodies import params as P
from .bodies import responses
from .console.logs import batch_context
from .engine import host as engine_host
from .engine.types import EngineDead, EngineError, GenerateItem

logger = logging.getLogger(__name__)

# How often the holder of a split batch looks whether the other workers' ranges are done.
RANGE_WAIT_SECONDS = 1.0


def validate_batch(batch, holder):
    """Moves a validating batch to in_progress, or to failed with errors.data."""
    return job_services.batch_validate(
        batch=batch, holder=holder, model_problem=lambda name: selectors.model_problem(name, batch.endpoint)
    )


_encode = json.JSONEncoder(ensure_ascii=False).encode
_LINE_BREAKS = ("\x85", "\u2028", "\u2029")
_CHAT_LINE = (
    '{"id": "batch_req_%s", "custom_id": %s, "response": {"status_code": 200, "request_id": "%s", '
    '"body": {"id": "chatcmpl-%s", "object": "chat.completion", "created": %d, "model": %s, '
    '"choices": [{"index": 0, "message": {"role": "assistant", "content": %s, "refusal": null, '
    '"tool_calls": []}, "logprobs": null, "finish_reason": %s, "stop_reason": %s}], '
    '"usage": {"prompt_tokens": %d, "completion_tokens": %d, "total_tokens": %d}, '
    '"system_fingerprint": null, "service_tier": null}}, "error": null}'
)


def chat_output_text(custom_id, generation, model):
    """The output line of a chat request with one choice and no logprobs, the
    common case, as dumps_line(output_line(custom_id, responses.chat_completion(...)))
    writes it, at a fifth of the cost: the fixed parts are a template, only the
    values are encoded. None for any other generation."""
    if len(generation.choices) != 1:
        return None
    choice = generation.choices[0]
    if choice.logprobs is not None:
        return None
    ids = os.urandom(48).hex()
    prompt, completion = generation.prompt_tokens, choice.completion_tokens
    text = _CHAT_LINE % (
        ids[:32],
        _encode(custom_id),
        ids[32:64],
        ids[64:],
        int(time.time()),
        _encode(model),
        _encode(choice.text),
        _encode(choice.finish_reason),
        _encode(choice.stop_reason),
        prompt,
        completion,
        prompt + completion,
    )
    if any(c in text for c in _LINE_BREAKS):
        return dumps_line(json.loads(text))
    return text


class _Saver:
    """Saves chunks on a thread of its own, one at a time, so the thread that feeds
    the engine goes on stepping it meanwhile. submit() waits for the chunk before,
    returns its result (or raises its exception) and hands over the next one. One
    thread and one database connection for the whole batch, closed by stop()."""

    def __init__(self, save):
        self.save = save
        self.thread = None
        self.chunks = queue.SimpleQueue()
        self.outcomes = queue.SimpleQueue()
        self.in_flight = False

    def _run(self):
        try:
            while (rows := self.chunks.get()) is not None:
                try:
                    self.outcomes.put((True, self.save(rows)))
                except BaseException as exc:  # re-raised on the feeding thread
                    self.outcomes.put((False, exc))
        finally:
            connection.close()

    def wait(self):
        """The result of the chunk in flight (None when there is none)."""
        if not self.in_flight:
            return None
        self.in_flight = False
        ok, value = self.outcomes.get()
        if not ok:
            raise value
        return value

    def submit(self, rows):
        before = self.wait()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="chunk-saver", daemon=True)
            self.thread.start()
        self.in_flight = True
        self.chunks.put(rows)
        return before

    def stop(self):
        """Waits for the chunk in flight and ends the thread; returns the chunk's result."""
        try:
            return self.wait()
        finally:
            if self.thread is not None:
                self.chunks.put(None)
                self.thread.join()
                self.thread = None


class ChunkWriter:
    """Collects finished requests and has jobs save them with the batch's counters.

    With `background`, a chunk is saved on a thread of its own while the next one
    fills (flush() then answers with the batch's state after the chunk before), and
    close() waits for it. Inside a transaction (the unit tests) saves stay on the
    caller's thread: another thread's connection would not see its rows."""

    def __init__(self, batch, holder, background=None, in_ranges=False):
        self.batch = batch
        self.holder = holder
        self.in_ranges = in_ranges
        self.rows = []
        self.last_flush = time.monotonic()
        self.flush_seconds = 2.0
        self.chunk_size = settings.VLLM_BATCH["CHUNK_SIZE"]
        # A split batch's ranges skip their own saved lines (jobs.ranges.requests).
        self.done_lines = frozenset() if in_ranges else job_selectors.batch_done_lines(batch.pk)
        if background is None:
            background = not connection.in_atomic_block
        self.saver = _Saver(self._save) if background else None
        self.last_state = None

    def add(self, line, custom_id, payload, is_error):
        # Tokens per row: only the rows the save actually inserts count in usage.
        i, o = (0, 0) if is_error else responses.usage_of(payload["response"]["body"])
        self.rows.append((line, custom_id, is_error, dumps_line(payload), i, o))

    def add_text(self, line, custom_id, text, input_tokens, output_tokens):
        """A successful request's output line, already encoded."""
        self.rows.append((line, custom_id, False, text, input_tokens, output_tokens))

    def due(self):
        return len(self.rows) >= self.chunk_size or (
            self.rows and time.monotonic() - self.last_flush > self.flush_seconds
        )

    def _save(self, rows):
        return job_services.batch_results_save(
            batch_id=self.batch.pk, holder=self.holder, rows=rows, in_ranges=self.in_ranges
        )

    def pending_requests(self):
        """(line, request) for the requests this writer's holder is to run: those
        without a result, or, in a split batch, those of the ranges it takes."""
        if self.in_ranges:
            return ranges.requests(self.batch, self.holder)
        return job_services.batch_pending_requests(self.batch, self.done_lines)

    def flush(self):
        """Saves the chunk; returns the batch's (status, expires_at, claimed_by) after
        the last chunk saved: in the background, the one before this one.
        Raises leases.LeaseLost (nothing of that chunk saved) when another worker
        took the batch over."""
        rows, self.rows = self.rows, []
        self.last_flush = time.monotonic()
        if self.saver is None:
            self.last_state = self._save(rows)
        else:
            self.last_state = self.saver.submit(rows) or self.last_state
        return self.last_state or self.current_state()

    def close(self):
        """Waits for the chunk in flight; returns the batch's state after it (None if none)."""
        if self.saver is None:
            return None
        state_after = self.saver.stop()
        if state_after is not None:
            self.last_state = state_after
        return state_after

    def finish(self):
        """Saves what is left and waits for every save; returns the batch's state after."""
        if self.rows:
            self.flush()
        return self.close() or self.last_state or self.current_state()

    def current_state(self):
        return Batch.objects.values_list("status", "expires_at", "claimed_by").get(pk=self.batch.pk)


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
                request_error_line(
                    custom_id, exc.message, code=exc.code, param=f"body.{exc.param}" if exc.param else None
                ),
                True,
            )
            continue
        parts[line] = {"custom_id": custom_id, "body": body, "results": [None] * len(prompts), "left": len(prompts)}
        options = P.chat_options(body)
        for index, prompt in enumerate(prompts):
            if chat:
                yield GenerateItem(key=(line, index), sampling=sampling, chat=prompt, chat_options=options)
            else:
                yield GenerateItem(key=(line, index), sampling=sampling, prompt=prompt)


def _run_order_key(item):
    # Longest expected output first (no max_tokens: up to the context, the longest),
    # then requests that share their first message (a system prompt) together.
    expected = item.sampling.get("max_tokens") or 1 << 30
    first = item.chat[0].get("content") if item.chat else item.prompt
    return -expected, first if isinstance(first, str) else ""


def in_run_order(items, lookahead):
    """The items in the order they go to the engine: in blocks of `lookahead`,
    each sorted by _run_order_key (a stable sort: file order among equals).
    Long requests started first leave short ones to fill the engine's batch at
    the end of a block, not a few long ones running nearly alone; results are
    saved per line, so the output keeps the input's order. 0: file order."""
    if lookahead <= 0:
        yield from items
        return
    items = iter(items)
    while block := list(itertools.islice(items, lookahead)):
        block.sort(key=_run_order_key)
        yield from block


def _finish_generation(line, entry, endpoint, model_name, writer):
    custom_id = entry["custom_id"]
    failure = next((r for r in entry["results"] if isinstance(r, EngineError)), None)
    if failure is not None:
        writer.add(
            line,
            custom_id,
            request_error_line(custom_id, failure.message, code=failure.code, param=failure.param),
            True,
        )
        return
    if endpoint == Batch.Endpoint.CHAT:
        generation = entry["results"][0]
        text = chat_output_text(custom_id, generation, model_name)
        if text is not None:
            completion_tokens = generation.choices[0].completion_tokens
            writer.add_text(line, custom_id, text, generation.prompt_tokens, completion_tokens)
            return
        body = responses.chat_completion(generation, model_name)
    else:
        body = responses.text_completion(entry["results"], model_name)
    writer.add(line, custom_id, output_line(custom_id, body), False)


def run_generation(batch, engine, writer, should_stop):
    parts = {}
    requests = writer.pending_requests()
    items = _generate_items(requests, batch.endpoint, writer, parts)
    # A split batch keeps file order: its next range is taken only when the engine asks for more.
    lookahead = 0 if writer.in_ranges else settings.VLLM_BATCH["RUN_ORDER_LOOKAHEAD"]
    stream = engine.generate(in_run_order(items, lookahead))
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
    requests = writer.pending_requests()
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
                    request_error_line(custom_id, exc.message, code=exc.code, param=f"body.{exc.param}"),
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
                        request_error_line(custom_id, failure.message, code=failure.code),
                        True,
                    )
                else:
                    body = responses.embedding_list(mine, engine.name, encoding)
                    writer.add(line, custom_id, output_line(custom_id, body), False)
        if writer.rows and should_stop(writer.flush()):
            return False
        if not chunk:
            return True


def process_batch(batch_id, holder=None):
    """The worker's whole job for one batch, for at most one task slice.

    Returns what happened, for the task result: "completed", "failed", "cancelled",
    "expired", "continued" (slice used up, continuation queued) or "skipped"."""
    holder = holder or leases.holder_name()
    with batch_context(batch_id):
        close_old_connections()
        batch = leases.claim(batch_id, holder)
        if batch is None:
            return "skipped"
        try:
            with ranges.RangeKeeper(batch.pk, holder, holds_batch=True), state.processing(batch.pk):
                return _process_claimed(batch, holder)
        except leases.LeaseLost:
            # Another worker took the batch over (this one was paused past the stale
            # limit): it finishes the batch; the chunk in flight was not saved.
            logger.warning("batch %s was taken over by another worker; stopping", batch_id)
            return "skipped"
        except Exception as exc:
            # Not a request's own error (those go to the error file): a parser blowing
            # up on some input, a bug, the database. Counted; the batch ends at the limit.
            logger.exception("batch %s: attempt failed", batch_id)
            return job_services.batch_attempt_failed(
                batch_id=batch_id, holder=holder, reason=f"{type(exc).__name__}: {exc}"
            )
        finally:
            ranges.release(batch_id, holder)
            leases.release(batch_id, holder)
            close_old_connections()


def help_batch(batch_id, holder=None):
    """Runs ranges of a split batch that another worker holds (jobs.ranges) until
    none is left to take, for at most one task slice; that worker finalizes the
    batch. Returns "helped", or "skipped" when there was nothing to take."""
    holder = holder or leases.holder_name()
    with batch_context(batch_id):
        close_old_connections()
        batch = Batch.objects.filter(pk=batch_id, status=Batch.Status.IN_PROGRESS).first()
        model = selectors.model_get_active(batch.model) if batch is not None else None
        if model is None or not ranges.is_split(batch_id):
            return "skipped"
        try:
            with (
                ranges.RangeKeeper(batch.pk, holder, holds_batch=False),
                state.processing(batch.pk),
                engine_host.engine_for(model, interrupted=_wanted_back(batch)) as engine,
            ):
                _run_on_engine(batch, holder, engine, helping=True)
        except (engine_host.Interrupted, leases.LeaseLost):
            pass  # handed back, or a range taken over: what is left goes to the next taker
        except EngineDead as exc:
            # Counted on the batch as the holder's deaths are: a request that kills engines ends the batch.
            failures = job_services.batch_engine_failed(batch_id=batch.pk)
            logger.error("the engine died helping with batch %s (failure %d): %s", batch.pk, failures, exc)
        finally:
            ranges.release(batch_id, holder)
            close_old_connections()
    return "helped"


def _wanted_back(batch):
    def wanted_back():
        # Checked about once a second while the batch waits for the engine.
        if state.stop_requested.is_set() or state.operator_handback_requested():
            return True
        return Batch.objects.filter(pk=batch.pk, status=Batch.Status.CANCELLING).exists()

    return wanted_back


def _wake_helpers(batch, holder):
    """Wake-ups for the idle workers elsewhere, to take ranges of a split batch:
    two each, as a busy cluster's task queue may take one in passing (an idle
    worker's heartbeat asks for more while ranges are free:
    workers.runtime.heartbeat.wake_for_free_ranges)."""
    idle = selectors.idle_workers(besides=holder)
    for _ in range(min(2 * len(idle), 2 * ranges.left(batch.pk))):
        queueing.enqueue_batch(batch.pk)


def _finalize(batch, holder, final_status, **kwargs):
    return job_services.batch_finalize(batch_id=batch.pk, final_status=final_status, holder=holder, **kwargs)


def _process_claimed(batch, holder):
    if job_services.batch_attempts_used_up(batch):
        return job_services.batch_give_up(batch_id=batch.pk, holder=holder)
    if batch.status == Batch.Status.VALIDATING:
        if timezone.now() >= batch.expires_at:
            return _finalize(batch, holder, Batch.Status.EXPIRED)
        valid = validate_batch(batch, holder)
        batch.refresh_from_db()
        # A cancel that arrived during validation left the batch cancelling, not failed:
        # it is finalized below rather than dropped with no lease.
        if not valid and batch.status == Batch.Status.FAILED:
            return "failed"
    if batch.status == Batch.Status.CANCELLING:
        return _finalize(batch, holder, Batch.Status.CANCELLED)
    if batch.status == Batch.Status.FINALIZING:
        return _finalize(batch, holder, Batch.Status.COMPLETED)
    if timezone.now() >= batch.expires_at:
        return _finalize(batch, holder, Batch.Status.EXPIRED)

    model = selectors.model_get_active(batch.model)
    if model is None:
        job_services.batch_fail(
            batch_id=batch.pk,
            holder=holder,
            code="model_not_found",
            message=f"The model '{batch.model}' is no longer registered.",
        )
        return "failed"

    if ranges.split(batch) and ranges.left(batch.pk) > 1:
        _wake_helpers(batch, holder)
    try:
        with engine_host.engine_for(model, interrupted=_wanted_back(batch)) as engine:
            finished, why = _run_on_engine(batch, holder, engine)
    except engine_host.Interrupted:
        finished, why = False, "continued"
    except EngineDead as exc:
        return _after_engine_death(batch, holder, exc)
    if why == "lost_lease":
        logger.warning("batch %s was taken over by another worker", batch.pk)
        return "skipped"
    if why == "cancelled":
        return _finalize(batch, holder, Batch.Status.CANCELLED)
    if why == "expired":
        return _finalize(batch, holder, Batch.Status.EXPIRED)
    if why == "continued" and not finished:
        leases.release_to_back(batch.pk, holder)
        queueing.enqueue_batch(batch.pk)
        return "continued"
    return _finalize(batch, holder, Batch.Status.COMPLETED)


def _run_on_engine(batch, holder, engine, helping=False):
    """Runs the batch's pending requests until done or told to stop; returns
    (finished, why it stopped or None). A split batch's holder runs ranges until
    none is left to take, then waits for the ones other workers hold (taking over
    any that goes stale) until all are done; a helper (`helping`) only runs ranges."""
    in_ranges = ranges.is_split(batch.pk)
    writer = ChunkWriter(batch, holder, in_ranges=in_ranges)
    slice_ends = time.monotonic() + settings.VLLM_BATCH["TASK_SLICE_SECONDS"]
    outcome = {}

    def should_stop(saved):
        status, expires_at, claimed_by = saved
        if claimed_by != holder and not helping:
            outcome["why"] = "lost_lease"
        elif status == Batch.Status.CANCELLING:
            outcome["why"] = "cancelled"
        elif timezone.now() >= expires_at:
            outcome["why"] = "expired"
        elif time.monotonic() >= slice_ends or state.stop_requested.is_set() or state.handback_requested():
            outcome["why"] = "continued"
        return bool(outcome)

    runner = run_embeddings if batch.endpoint == Batch.Endpoint.EMBEDDINGS else run_generation
    try:
        finished = runner(batch, engine, writer, should_stop)
        while finished and in_ranges and not helping:
            writer.finish()  # its own last chunk counts before it looks at the others'
            if not ranges.left(batch.pk):
                break
            # Bounded by the slice: should_stop ends the wait with it (or a cancel, the expiry).
            if should_stop(writer.current_state()):
                finished = False
                break
            time.sleep(RANGE_WAIT_SECONDS)
            finished = runner(batch, engine, writer, should_stop)
    except EngineDead:
        writer.finish()  # what finished before the engine died is kept
        raise
    except BaseException:
        try:
            writer.close()  # no save left running behind the caller's back
        except Exception:
            logger.exception("batch %s: the chunk in flight was not saved", batch.pk)
        raise
    if finished:
        should_stop(writer.finish())
    else:
        writer.close()  # the chunk in flight is saved before the batch is handed on
    return finished, outcome.get("why")


def _after_engine_death(batch, holder, exc):
    """The engine's process died under the batch: the batch goes back on the queue
    (the next attempt loads a new engine and resumes), until it has killed the
    engine MAX_ENGINE_FAILURES times; then the requests not run yet end as errors."""
    failures = job_services.batch_engine_failed(batch_id=batch.pk)
    limit = settings.VLLM_BATCH["MAX_ENGINE_FAILURES"]
    logger.error("the engine died running batch %s (failure %d of %d): %s", batch.pk, failures, limit, exc)
    if failures < limit:
        leases.release(batch.pk, holder)
        queueing.enqueue_batch(batch.pk)
        return "continued"
    message = f"The engine failed {failures} times while running this batch; this request was not run. Last: {exc}"
    return _finalize(batch, holder, Batch.Status.COMPLETED, unfinished=("engine_error", message))
