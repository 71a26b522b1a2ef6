"""The vLLM engine, behind one module: load, generate, embed, unload.

Nothing else in the project imports vllm (workers/engine/host.py imports this
module when a worker first loads a model), so the web process never pays for it
and swapping or upgrading the engine is a change to this file alone. Results
come back as plain dataclasses (engine/types.py); workers/bodies/responses.py
turns them into OpenAI bodies.
"""

import gc
import inspect
import itertools
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator

from concurrent_log_handler import ConcurrentRotatingFileHandler
from django.conf import settings

# vLLM reads these at import; safe defaults for a CPU host, ignored on CUDA.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.VLLM_BATCH["CPU_KVCACHE_GIB"]))
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import vllm
from vllm.platforms import current_platform
from vllm.pooling_params import PoolingParams
from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
from vllm.v1.engine.exceptions import EngineDeadError

from . import cpu_policy
from .types import (
    Choice,
    Embedding,
    EngineDead,
    EngineError,
    GenerateItem,
    Generation,
    TokenLogprob,
)

logger = logging.getLogger(__name__)


def _share_log_files():
    # vLLM's "vllm" logger keeps its own stdout handler and does not propagate: give
    # it the worker's log file too, so the log viewer shows the engine's messages.
    vllm_logger = logging.getLogger("vllm")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ConcurrentRotatingFileHandler) and handler not in vllm_logger.handlers:
            vllm_logger.addHandler(handler)


_share_log_files()

DEFAULT_ENGINE_ARGS = {
    # Compact JSON from structured outputs: without it a weak model can spend
    # max_tokens on whitespace and never close the object.
    "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    "disable_log_stats": True,
    # Realtime requests join a running batch with a higher priority, so they are
    # scheduled before the batch's waiting requests instead of behind them.
    "scheduling_policy": "priority",
}
if current_platform.is_cpu():
    # vllm-cpu 0.32.0 kills its EngineCore ("CPU Generator does not use offset")
    # when a request with a `seed` is prefilled in chunks; whole-prompt prefill
    # avoids it (prompts are at most max_model_len, which the CPU budget covers).
    DEFAULT_ENGINE_ARGS["enable_chunked_prefill"] = False

REALTIME_PRIORITY = -1


def llm_kwargs(engine_args):
    """The keyword arguments the worker gives vllm.LLM for a registered model's
    engine_args() (bench/run_batch_bench.py compares LLM.chat with exactly these)."""
    args = {**DEFAULT_ENGINE_ARGS, **engine_args}
    if args.get("runner", "generate") == "pooling":
        args.pop("structured_outputs_config", None)
    return args


# Requests rendered and added per engine call while filling the window.
ADD_GROUP = 64


def _same_call(a, b):
    return (a.chat is None) == (b.chat is None) and a.chat_options == b.chat_options


def _token_bytes(token):
    return list(token.encode("utf-8", errors="replace")) if token is not None else None


def _logprobs(output, want):
    # logprobs=0 still asks for the chosen tokens (OpenAI: `logprobs: true` alone).
    if want is None or output.logprobs is None:
        return None
    entries = []
    for token_id, position in zip(output.token_ids, output.logprobs, strict=False):
        chosen = position.get(token_id)
        top = sorted(position.items(), key=lambda kv: kv[1].rank or 0)
        token = chosen.decoded_token if chosen else ""
        entries.append(
            TokenLogprob(
                token=token,
                logprob=chosen.logprob if chosen else float("-inf"),
                bytes=_token_bytes(token),
                top=[(lp.decoded_token, lp.logprob, _token_bytes(lp.decoded_token)) for _, lp in top][:want],
            )
        )
    return entries


def _generation(request_output, want_logprobs):
    return Generation(
        prompt_tokens=len(request_output.prompt_token_ids or ()),
        choices=[
            Choice(
                text=o.text,
                completion_tokens=len(o.token_ids),
                finish_reason=o.finish_reason or "stop",
                stop_reason=o.stop_reason,
                logprobs=_logprobs(o, want_logprobs),
            )
            for o in sorted(request_output.outputs, key=lambda o: o.index)
        ],
    )


def _delta(request_output):
    """What a streamed (DELTA) output adds: per choice the new text and tokens."""
    return {
        "prompt_tokens": len(request_output.prompt_token_ids or ()),
        "choices": [
            {"index": o.index, "text": o.text, "tokens": len(o.token_ids), "finish_reason": o.finish_reason}
            for o in request_output.outputs
        ],
    }


class RealtimeRequest:
    """One realtime request; its events ("delta", dict) / ("done", Generation) /
    ("error", EngineError) arrive on `events` from whichever thread steps the engine."""

    def __init__(self, item, stream):
        self.id = f"rt-{uuid.uuid4().hex}"
        self.item = item
        self.stream = stream
        self.events = queue.Queue()


def _sampling_params(kwargs):
    kwargs = dict(kwargs)
    structured = kwargs.pop("structured_outputs", None)
    if structured:
        kwargs["structured_outputs"] = StructuredOutputsParams(**structured)
    return SamplingParams(**kwargs)


def _engine_calls(method):
    """Turns vLLM's EngineDeadError into EngineDead and remembers it, so callers
    can tell a dead engine from a request the engine refused."""

    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except EngineDeadError as exc:
            self.dead = True
            raise EngineDead(str(exc)) from exc

    def generator_wrapper(self, *args, **kwargs):
        try:
            yield from method(self, *args, **kwargs)
        except EngineDeadError as exc:
            self.dead = True
            raise EngineDead(str(exc)) from exc

    chosen = generator_wrapper if inspect.isgeneratorfunction(method) else wrapper
    chosen.__name__, chosen.__doc__ = method.__name__, method.__doc__
    return chosen


class Engine:
    """One loaded model. vLLM's engine is not thread-safe: whoever holds
    `step_lock` (the batch loop, or a realtime request waiting for its answer)
    is the only thread that adds requests and steps it."""

    def __init__(self, name, engine_args):
        self.name = name
        self.engine_args = dict(engine_args)
        self.runner = self.engine_args.get("runner", "generate")
        self.lock = threading.Lock()
        self.step_lock = threading.Lock()
        self._submitted = queue.Queue()
        self._cancelled = queue.Queue()
        self._realtime = {}
        self.dead = False
        # vLLM names the model in the errors it raises: the name users know, never its path.
        args = {"served_model_name": name, **llm_kwargs(self.engine_args)}
        started = time.monotonic()
        logger.info("loading model %s from %s", name, args.get("model"))
        before = cpu_policy.child_pids()
        self.llm = vllm.LLM(**args)
        cpu_policy.apply_to_engine(settings.VLLM_BATCH["ENGINE_CPU_POLICY"], before)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        logger.info("model %s loaded in %.1f s", name, time.monotonic() - started)
        self._closed = threading.Event()
        threading.Thread(target=self._watch_engine_process, name=f"engine-watch-{name}", daemon=True).start()

    def _watch_engine_process(self):
        # vLLM's sync client notices when its EngineCore process dies (engine_dead)
        # but leaves a thread inside step() blocked forever on the output queue:
        # wake it with the error, so the batch is resumed on a new engine.
        client = self.llm.llm_engine.engine_core
        resources = getattr(client, "resources", None)
        outputs = getattr(client, "outputs_queue", None)
        if resources is None or outputs is None:
            return  # the engine runs in this process: nothing to watch
        while not self._closed.wait(1.0):
            if resources.engine_dead:
                logger.error("the engine process of %s died", self.name)
                self.dead = True
                outputs.put_nowait(EngineDeadError())
                return

    def shutdown(self, timeout=30):
        """Stops the engine's processes and frees its memory."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        self._closed.set()
        try:
            llm.llm_engine.engine_core.shutdown(timeout=timeout)
        except Exception:
            logger.exception("engine shutdown raised")
        del llm
        gc.collect()
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            logger.debug("no CUDA cache to empty", exc_info=True)

    # -- generation ---------------------------------------------------------

    def _add(self, item):
        (request_id,) = self._enqueue([item])
        # enqueue* return the engine's internal id "<n>-<random>"; outputs carry
        # the external "<n>". Abort takes the internal one.
        return request_id.split("-", 1)[0], request_id

    def _add_group(self, items):
        """Adds items with as few engine calls as possible: rendering many prompts in
        one call costs far less than one call each. Yields (item, ids or exception);
        a group the engine refuses is retried one by one to find the bad request."""
        start = 0
        while start < len(items):
            first = items[start]
            end = start + 1
            while end < len(items) and _same_call(first, items[end]):
                end += 1
            group = items[start:end]
            start = end
            try:
                ids = self._enqueue(group)
            except EngineDeadError:
                raise
            except Exception:  # vLLM validates while adding; isolate the culprit
                ids = None
            if ids is not None and len(ids) == len(group):
                for item, request_id in zip(group, ids, strict=True):
                    yield item, (request_id.split("-", 1)[0], request_id)
                continue
            for item in group:
                try:
                    yield item, self._add(item)
                except EngineDeadError:
                    raise
                except Exception as exc:
                    yield item, exc

    def _enqueue(self, group):
        # Requests of a batch mostly share their parameters: building SamplingParams
        # once per run of equal ones saves its validation per request. vLLM copies
        # the parameters per request, so sharing the object is safe.
        params = []
        for item in group:
            if not params or item.sampling != group[len(params) - 1].sampling:
                params.append(_sampling_params(item.sampling))
            else:
                params.append(params[-1])
        first = group[0]
        if first.chat is not None:
            options = first.chat_options
            return self.llm.enqueue_chat(
                [item.chat for item in group],
                params,
                use_tqdm=False,
                chat_template_kwargs=options.get("chat_template_kwargs"),
                add_generation_prompt=options.get("add_generation_prompt", True),
                continue_final_message=options.get("continue_final_message", False),
                tools=options.get("tools"),
            )
        prompts = [{"prompt_token_ids": i.prompt} if isinstance(i.prompt, list) else i.prompt for i in group]
        return self.llm.enqueue(prompts, params, use_tqdm=False)

    @_engine_calls
    def generate(self, items: Iterable[GenerateItem], window: int = 1024) -> Iterator[tuple]:
        """Streams items through vLLM's continuous batching.

        Keeps up to `window` requests in the engine and yields (key, Generation)
        as each finishes, or (key, EngineError) for a request the engine refused.
        Closing the generator aborts whatever is still in flight."""
        with self.step_lock:
            yield from self._generate(items, window)

    def _generate(self, items, window):
        engine = self.llm.llm_engine
        pending = iter(items)
        in_flight = {}
        exhausted = False
        try:
            while True:
                self._service_realtime()
                # Refilled a group at a time, not a request as each finishes: one
                # render-and-add call (and one SamplingParams) serves many requests,
                # and the engine still has the rest of the window waiting meanwhile.
                while not exhausted and (window - len(in_flight) >= min(ADD_GROUP, window) or not in_flight):
                    group = list(itertools.islice(pending, min(ADD_GROUP, window - len(in_flight))))
                    if not group:
                        exhausted = True
                        break
                    for item, added in self._add_group(group):
                        if isinstance(added, Exception):
                            yield item.key, EngineError(str(added))
                        else:
                            in_flight[added[0]] = (added[1], item)
                if not in_flight:
                    return
                if not engine.has_unfinished_requests():
                    # step() would block forever; never seen, but never hang on it.
                    lost = list(in_flight.values())
                    in_flight.clear()
                    for _, item in lost:
                        yield item.key, EngineError("The engine dropped the request.", code="engine_error")
                    continue
                for output in engine.step():
                    if self._route(output) or not output.finished:
                        continue
                    entry = in_flight.pop(output.request_id, None)
                    if entry is None:
                        continue
                    item = entry[1]
                    yield item.key, _generation(output, item.sampling.get("logprobs"))
        finally:
            if in_flight and not self.dead:
                engine.abort_request([internal_id for internal_id, _ in in_flight.values()], internal=True)
                # Drain so the aborted requests don't surface in a later call; realtime
                # requests still running are left to their own threads.
                while engine.has_unfinished_requests() and not self._realtime:
                    for output in engine.step():
                        self._route(output)

    # -- realtime -------------------------------------------------------------

    def submit(self, item: GenerateItem, stream=False) -> RealtimeRequest:
        """Queues a realtime request from any thread; the thread holding
        `step_lock` adds it to the engine, alongside a running batch."""
        request = RealtimeRequest(item, stream)
        self._submitted.put(request)
        return request

    @_engine_calls
    def cancel(self, request):
        self._cancelled.put(request.id)
        # Abort now if nobody steps the engine; otherwise its stepper does it.
        if self.step_lock.acquire(blocking=False):
            try:
                self._service_realtime()
            finally:
                self.step_lock.release()

    @_engine_calls
    def next_event(self, request, timeout):
        """The request's next event. When no batch steps the engine, the waiting
        thread steps it itself. Raises TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.step_lock.acquire(blocking=False):
                try:
                    while request.events.empty() and time.monotonic() < deadline:
                        self._service_realtime()
                        if not self.llm.llm_engine.has_unfinished_requests():
                            break
                        for output in self.llm.llm_engine.step():
                            self._route(output)
                finally:
                    self.step_lock.release()
            try:
                return request.events.get(timeout=0.02)
            except queue.Empty:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(request.id)

    def _service_realtime(self):
        """Adds submitted and aborts cancelled realtime requests; holder of step_lock only."""
        # Cancels first: a request is submitted before it can be cancelled, so one
        # cancelled before it was added is still in the submitted queue and is skipped.
        cancelled = set()
        while not self._cancelled.empty():
            cancelled.add(self._cancelled.get())
        while not self._submitted.empty():
            request = self._submitted.get()
            if request.id in cancelled:
                continue
            try:
                self._add_realtime(request)
            except EngineDeadError:
                raise
            except Exception as exc:  # vLLM validates while adding
                request.events.put(("error", EngineError(str(exc))))
            else:
                self._realtime[request.id] = request
        aborted = [request_id for request_id in cancelled if self._realtime.pop(request_id, None) is not None]
        if aborted:
            self.llm.llm_engine.abort_request(aborted)

    def _add_realtime(self, request):
        item = request.item
        params = _sampling_params(item.sampling)
        if request.stream:
            params.output_kind = RequestOutputKind.DELTA
        if item.chat is not None:
            options = item.chat_options
            engine_input = self.llm._preprocess_chat_one(
                item.chat,
                chat_template_kwargs=options.get("chat_template_kwargs"),
                add_generation_prompt=options.get("add_generation_prompt", True),
                continue_final_message=options.get("continue_final_message", False),
                tools=options.get("tools"),
            )
        else:
            prompt = item.prompt
            engine_input = self.llm._preprocess_cmpl_one(
                {"prompt_token_ids": prompt} if isinstance(prompt, list) else prompt
            )
        self.llm.llm_engine.add_request(request.id, engine_input, params, priority=REALTIME_PRIORITY)

    def _route(self, output):
        """Hands a realtime request's output to its waiter; False for batch outputs."""
        if not output.request_id.startswith("rt-"):
            return False
        request = self._realtime.get(output.request_id)
        if request is None:
            return True
        if request.stream:
            request.events.put(("delta", _delta(output)))
        if output.finished:
            del self._realtime[output.request_id]
            generation = None if request.stream else _generation(output, request.item.sampling.get("logprobs"))
            request.events.put(("done", generation))
        return True

    # -- embeddings ---------------------------------------------------------

    @_engine_calls
    def embed(self, inputs, dimensions=None, timeout=None):
        """Embeds a list of strings or token-id lists; returns a list of
        Embedding or EngineError, one per input. Waits at most `timeout` seconds
        for the engine (TimeoutError), forever without one."""
        prompts = [{"prompt_token_ids": x} if isinstance(x, list) else x for x in inputs]
        params = PoolingParams(dimensions=dimensions) if dimensions else None
        if not self.step_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError("the engine stayed busy")
        try:
            return self._embed(prompts, params)
        finally:
            self.step_lock.release()

    def _embed(self, prompts, params):
        try:
            outputs = self.llm.embed(prompts, pooling_params=params, use_tqdm=False)
        except EngineDeadError:
            raise
        except Exception as exc:
            if len(prompts) == 1:
                # Refused (e.g. `dimensions` on a model without Matryoshka embeddings): that request's error.
                return [EngineError(str(exc))]
            # Find which inputs the engine refuses without losing the others.
            return [self._embed_one(p, params) for p in prompts]
        return [Embedding(len(o.prompt_token_ids or ()), list(o.outputs.embedding)) for o in outputs]

    def _embed_one(self, prompt, params):
        try:
            (output,) = self.llm.embed([prompt], pooling_params=params, use_tqdm=False)
        except EngineDeadError:
            raise
        except Exception as exc:
            return EngineError(str(exc))
        return Embedding(len(output.prompt_token_ids or ()), list(output.outputs.embedding))
