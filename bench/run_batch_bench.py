"""Throughput benchmark: vllm-batch against plain vLLM, on the embedded tiny model.

Measures:

  A. plain vLLM offline, warm: LLM.chat(all conversations) in a subprocess,
     timed after a warm-up, engine start excluded;
  B. vLLM's own batch runner, `python -m vllm.entrypoints.openai.run_batch`,
     timed end to end (engine start included) and processing only (from its
     "Reading batch" log line, printed once the engine is up, to its output
     file being written; also, as a cross-check, its total time minus the
     total time of a 1-request run);
  C. vllm-batch, warm worker, on the dev stack (devtools/devstack.py): migrate,
     register the model, create an API key, start gunicorn and qcluster, run a
     small batch to load the engine, then
     time upload + create -> status "completed" for the N-request file through
     the openai SDK, and check the output file (N lines, every custom_id once).

A and C are both started and warmed first, then their timed runs alternate
(A,C / C,A / A,C ...) on the same prompt files, so slow drifts in the machine's
speed hit both alike; B runs afterwards, alone (each of its runs starts its own
engine). Only one engine computes at any time. With --repeat K each part is
timed K times, on K different request files (no run is helped by the prefix
cache of an earlier one); the summary is the median. For every timed window the
share of the machine's CPU used by other processes is recorded: on a shared
machine that is the noise in the numbers.

Prints a table and writes <out>/bench.json (and a timestamped copy). Usage:

    .venv/bin/python bench/run_batch_bench.py [--requests 2000] [--max-tokens 64] [--out DIR] [--repeat K]

The hidden sub-command `_llm_chat` is reference A's child process.
"""

import argparse
import json
import os
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import openai
import psutil

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
sys.path.insert(0, str(REPO))

from devtools.devstack import Stack  # noqa: E402
from devtools.tiny_model import WORDS, build_tiny_model  # noqa: E402

MODEL_NAME = "tiny-llama"
GPU_MEM = "0.3"
MAX_MODEL_LEN = "2048"

# Time bounds (seconds) for every wait.
ENGINE_RUN_TIMEOUT = 1800  # one reference process, engine start included
COMMAND_TIMEOUT = 300  # manage.py commands
WARM_BATCH_TIMEOUT = 600  # first batch: worker start + engine load
TIMED_BATCH_TIMEOUT = 1800
STOP_TIMEOUT = 45  # SIGTERM -> SIGKILL
POLL_SECONDS = 0.2

TOPICS = [
    "Summarize this review in one sentence",
    "Label the sentiment as positive, negative or neutral",
    "Answer yes or no",
    "Translate to a list of words",
    "Give the name and value as json",
    "Count the words in this text",
    "Which city is mentioned",
    "Write a short answer",
]

OUR_GROUPS = set()  # process groups (= sessions) this benchmark started
NOISY_OTHERS_PCT = 10  # others' share of the CPUs during a window that marks it noisy


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def median(values):
    values = list(values)
    return statistics.median(values) if values else None


def base_env():
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("VLLM_DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- inputs ---------------------------------------------------------------------


def build_model(out):
    path = out / MODEL_NAME
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        log(f"reusing tiny model at {path}")
        return path
    started = time.monotonic()
    build_tiny_model(path)
    log(f"built tiny model at {path} in {time.monotonic() - started:.1f} s")
    return path


def _words():
    return list(WORDS)


def prompt_text(rng, words):
    return f"{rng.choice(TOPICS)}: {' '.join(rng.choice(words) for _ in range(rng.randint(4, 20)))}"


def request_line(custom_id, content, max_tokens):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL_NAME,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        },
    }


def write_requests(path, count, max_tokens, prefix, seed):
    rng = random.Random(seed)
    words = _words()
    with open(path, "w") as f:
        for i in range(count):
            f.write(json.dumps(request_line(f"{prefix}-{i}", prompt_text(rng, words), max_tokens)) + "\n")
    return path


def read_ids(path):
    with open(path) as f:
        return [json.loads(line)["custom_id"] for line in f if line.strip()]


def check_output(path_or_bytes, expected_ids):
    """Checks a batch output JSONL: one line per custom_id, each a 200 response."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        text = path_or_bytes.decode("utf-8")
    else:
        text = Path(path_or_bytes).read_text()
    # JSONL lines end at "\n" only: splitlines() would also break inside strings holding U+2028.
    lines = text.split("\n")
    lines = [line for line in lines if line.strip()]
    seen = {}
    bad = 0
    tokens = 0
    for line in lines:
        obj = json.loads(line)
        seen[obj["custom_id"]] = seen.get(obj["custom_id"], 0) + 1
        response = obj.get("response") or {}
        if obj.get("error") or response.get("status_code") != 200:
            bad += 1
            continue
        tokens += (response.get("body") or {}).get("usage", {}).get("completion_tokens", 0)
    expected = set(expected_ids)
    result = {
        "lines": len(lines),
        "expected": len(expected),
        "duplicates": sum(1 for n in seen.values() if n > 1),
        "missing": len(expected - set(seen)),
        "unexpected": len(set(seen) - expected),
        "errors": bad,
        "completion_tokens": tokens,
    }
    result["ok"] = (
        result["lines"] == len(expected)
        and not result["duplicates"]
        and not result["missing"]
        and not result["unexpected"]
        and not bad
    )
    return result


# -- processes ------------------------------------------------------------------


class Procs:
    """Subprocesses started in their own session; stopped as process groups."""

    def __init__(self):
        self.procs = []

    def start(self, args, log_path, env, **kwargs):
        log_file = open(log_path, "ab")  # noqa: SIM115  (closed in stop())
        proc = subprocess.Popen(
            args,
            cwd=str(REPO),
            env=env,
            stdin=kwargs.pop("stdin", subprocess.DEVNULL),
            stdout=kwargs.pop("stdout", log_file),
            stderr=kwargs.pop("stderr", subprocess.STDOUT),
            start_new_session=True,
            **kwargs,
        )
        proc._bench_log = log_file
        OUR_GROUPS.add(proc.pid)
        self.procs.append(proc)
        return proc

    def stop(self, proc, timeout=STOP_TIMEOUT):
        """SIGTERM to the process group, a bounded wait, then SIGKILL to the group."""
        if proc not in self.procs:
            return
        self.procs.remove(proc)
        try:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log(f"pid {proc.pid} ({Path(proc.args[0]).name} {proc.args[1]}) ignored SIGTERM for {timeout} s")
            # Children (vLLM's EngineCore) can outlive their parent; end the group.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log(f"pid {proc.pid} still there after SIGKILL")
        finally:
            proc._bench_log.close()

    def stop_all(self):
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def wait_proc(procs, proc, timeout, what):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        raise RuntimeError(f"{what} did not finish within {timeout} s") from None


# -- noise ----------------------------------------------------------------------


def other_engines():
    """Other vLLM engine processes on the machine (they make timings noisy)."""
    groups = OUR_GROUPS | {os.getpgid(0)}
    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            title = (" ".join(p.info["cmdline"] or []) or p.info["name"] or "").strip()
            if title.startswith("VLLM::") and os.getpgid(p.info["pid"]) not in groups:
                found.append(f"{p.info['pid']} {title}")
        except (psutil.Error, OSError):
            continue
    return found


class LoadMeter:
    """CPU used on the machine during a timed window, split into ours and others'.

    "Ours" is every process in this benchmark's process groups and the caller's
    own group; the rest is other work on the machine, which skews the timing."""

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot():
        cpu = psutil.cpu_times()
        busy = sum(getattr(cpu, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
        groups = OUR_GROUPS | {os.getpgid(0)}
        ours = {}
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) in groups:
                    times = p.cpu_times()
                    title = " ".join(p.cmdline()[:3])[:60] or p.name()
                    ours[p.pid] = (times.user + times.system, title)
            except (psutil.Error, OSError):
                continue
        return time.monotonic(), busy, ours

    def stop(self):
        end = self._snapshot()
        wall = max(end[0] - self.start[0], 1e-9)
        capacity = wall * (os.cpu_count() or 1)
        busy = end[1] - self.start[1]
        used = {}
        for pid, (t, title) in end[2].items():
            used[f"{pid} {title}"] = t - self.start[2].get(pid, (0.0, ""))[0]
        ours = sum(used.values())
        top = sorted(used.items(), key=lambda kv: -kv[1])[:6]
        return {
            "window_s": round(wall, 3),
            "machine_busy_pct": round(100 * busy / capacity, 1),
            "ours_pct": round(100 * ours / capacity, 1),
            "others_pct": round(100 * max(busy - ours, 0.0) / capacity, 1),
            "ours_cpu_s_by_process": {name: round(t, 2) for name, t in top if t >= 0.05},
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "other_vllm_engines": other_engines(),
        }


def noisy(load):
    return bool(load) and load.get("others_pct", 0) > NOISY_OTHERS_PCT


def load_note(load):
    if not load:
        return ""
    note = f" [others used {load['others_pct']:.0f}% of the CPUs meanwhile"
    if load["other_vllm_engines"]:
        note += f"; {len(load['other_vllm_engines'])} other vLLM processes up"
    return note + ("; NOISY]" if noisy(load) else "]")


# -- A: plain vLLM LLM.chat -------------------------------------------------------

PROTOCOL = "@@bench "  # prefix of the A child's result lines on stdout (vLLM logs there too)


def child_llm_chat(argv):
    """Reference A's child: load, warm up, then time one LLM.chat per command read
    from stdin ({"path": ..., "groups": [...]}), answering each with a result line;
    "quit" or end of input stops it."""
    parser = argparse.ArgumentParser(prog="run_batch_bench.py _llm_chat")
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-tokens", type=int, required=True)
    parser.add_argument("--engine-args", default="{}", help="more vllm.LLM arguments, JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    import vllm
    from vllm import SamplingParams

    def say(event, **data):
        print(PROTOCOL + json.dumps({"event": event, **data}), flush=True)

    started = time.monotonic()
    llm = vllm.LLM(
        model=args.model,
        gpu_memory_utilization=float(GPU_MEM),
        max_model_len=int(MAX_MODEL_LEN),
        **json.loads(args.engine_args),
    )
    engine_start = time.monotonic() - started
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    rng = random.Random(12345)
    words = _words()
    llm.chat([[{"role": "user", "content": prompt_text(rng, words)}] for _ in range(32)], params, use_tqdm=False)
    say("ready", engine_start_s=engine_start)

    for command in sys.stdin:
        if not command.strip() or command.strip() == "quit":
            break
        command = json.loads(command)
        path = command["path"]
        OUR_GROUPS.update(command["groups"])  # the parent's processes count as ours, not as noise
        with open(path) as f:
            conversations = [json.loads(line)["body"]["messages"] for line in f if line.strip()]
        meter = LoadMeter()
        started = time.monotonic()
        outputs = llm.chat(conversations, params, use_tqdm=False)
        seconds = time.monotonic() - started
        load = meter.stop()
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        say(
            "run",
            input=path,
            requests=len(conversations),
            outputs=len(outputs),
            seconds=seconds,
            req_per_s=len(conversations) / seconds,
            completion_tokens=tokens,
            tok_per_s=tokens / seconds,
            load=load,
        )
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:
        pass


class ReferenceA:
    """The LLM.chat child, kept warm so its timed runs can alternate with vllm-batch's."""

    def __init__(self, procs, model, max_tokens, logs, engine_args="{}"):
        self.procs = procs
        self.engine_args = engine_args
        self.events = queue.Queue()
        self.log_path = logs / "a_llm_chat.log"
        self.runs = []
        self.proc = procs.start(
            [
                PYTHON,
                str(Path(__file__).resolve()),
                "_llm_chat",
                "--model",
                str(model),
                "--max-tokens",
                str(max_tokens),
                "--engine-args",
                engine_args,
            ],
            self.log_path,
            base_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        with open(self.log_path, "a") as log_file:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", errors="replace")
                log_file.write(line)
                log_file.flush()
                if line.startswith(PROTOCOL):
                    self.events.put(json.loads(line[len(PROTOCOL) :]))
        self.events.put({"event": "exit"})

    def _next(self, timeout, what):
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"A: no {what} from the LLM.chat child within {timeout} s") from None
        if event["event"] == "exit":
            raise RuntimeError(f"A: the LLM.chat child exited; see {self.log_path}")
        return event

    def wait_ready(self):
        log("A: starting plain vLLM LLM.chat (engine start + warm-up not timed)")
        self.ready = self._next(ENGINE_RUN_TIMEOUT, "ready")
        log(f"A: engine up in {self.ready['engine_start_s']:.1f} s")

    def run(self, path, number):
        self.proc.stdin.write((json.dumps({"path": str(path), "groups": sorted(OUR_GROUPS)}) + "\n").encode())
        self.proc.stdin.flush()
        run = self._next(TIMED_BATCH_TIMEOUT, "result")
        self.runs.append(run)
        log(
            f"A run {number}: {run['requests']} requests in {run['seconds']:.2f} s = {run['req_per_s']:.1f} req/s"
            + load_note(run["load"])
        )
        return run

    def stop(self):
        try:
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.procs.stop(self.proc)

    def result(self):
        return {
            "engine_start_s": self.ready["engine_start_s"],
            "engine_args": json.loads(self.engine_args),
            "runs": self.runs,
            "req_per_s": median(r["req_per_s"] for r in self.runs),
            "seconds": median(r["seconds"] for r in self.runs),
        }


# -- B: vLLM's run_batch ----------------------------------------------------------


def run_vllm_run_batch(procs, model, input_file, output_file, log_path):
    """Runs run_batch once, reading its log as it comes; returns timings."""
    output_file.unlink(missing_ok=True)
    args = [
        PYTHON,
        "-m",
        "vllm.entrypoints.openai.run_batch",
        "-i",
        str(input_file),
        "-o",
        str(output_file),
        "--model",
        str(model),
        "--served-model-name",
        MODEL_NAME,
        "--gpu-memory-utilization",
        GPU_MEM,
        "--max-model-len",
        MAX_MODEL_LEN,
    ]
    events = {}
    started_wall = time.time()
    started = time.monotonic()
    proc = procs.start(args, log_path, base_env(), stdout=subprocess.PIPE)

    def read():
        with open(log_path, "a") as log_file:
            for raw in proc.stdout:
                now = time.time()
                line = raw.decode("utf-8", errors="replace")
                log_file.write(line)
                # Logged once the engine is up, just before the file is read and submitted.
                if "Reading batch from" in line and "reading" not in events:
                    events["reading"] = now
                    events["meter"] = LoadMeter()
                elif "Writing outputs to" in line and "meter" in events:
                    events["load"] = events["meter"].stop()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = wait_proc(procs, proc, ENGINE_RUN_TIMEOUT, "run_batch")
    total = time.monotonic() - started
    reader.join(timeout=10)
    procs.stop(proc)
    if code != 0 or not output_file.exists():
        raise RuntimeError(f"run_batch exited {code}; see {log_path}")
    timings = {"total_s": total, "exit_code": code}
    if "reading" in events:
        # From "engine ready, reading the batch" to the output file written; engine shutdown excluded.
        timings["startup_s_from_log"] = events["reading"] - started_wall
        timings["processing_s_from_log"] = output_file.stat().st_mtime - events["reading"]
        timings["load"] = events.get("load")
    return timings


def bench_run_batch(procs, model, request_files, one_file, count, out, logs):
    log("B: vLLM run_batch with 1 request (startup measurement)")
    one = run_vllm_run_batch(procs, model, one_file, out / "run_batch_one_out.jsonl", logs / "b_run_batch_one.log")
    log(f"B: 1 request: {one['total_s']:.1f} s total")
    runs = []
    for i, requests_file in enumerate(request_files, 1):
        log(f"B run {i}: vLLM run_batch with {count} requests")
        output = out / f"run_batch_out_{i}.jsonl"
        run = run_vllm_run_batch(procs, model, requests_file, output, logs / f"b_run_batch_{i}.log")
        run["requests"] = count
        run["req_per_s_total"] = count / run["total_s"]
        run["output_check"] = check_output(output, read_ids(requests_file))
        if "processing_s_from_log" in run:
            run["req_per_s_processing_log"] = count / run["processing_s_from_log"]
        # Cross-check only: engine start varies by tens of seconds on a busy machine.
        subtracted = run["total_s"] - one["total_s"]
        if subtracted > 0:
            run["processing_s_minus_1req_run"] = subtracted
            run["req_per_s_processing_minus_1req_run"] = count / subtracted
        runs.append(run)
        processing = run.get("processing_s_from_log", float("nan"))
        log(
            f"B run {i}: total {run['total_s']:.1f} s = {run['req_per_s_total']:.1f} req/s; "
            f"processing {processing:.2f} s = {run.get('req_per_s_processing_log', 0):.1f} req/s; "
            f"output ok={run['output_check']['ok']}" + load_note(run.get("load"))
        )
    result = {"requests": count, "one_request_total_s": one["total_s"], "runs": runs}
    for key in (
        "total_s",
        "req_per_s_total",
        "processing_s_from_log",
        "req_per_s_processing_log",
        "req_per_s_processing_minus_1req_run",
    ):
        values = [r[key] for r in runs if r.get(key)]
        if values:
            result[key] = median(values)
    result["req_per_s_processing"] = result.get("req_per_s_processing_log") or result.get(
        "req_per_s_processing_minus_1req_run"
    )
    result["output_ok"] = all(r["output_check"]["ok"] for r in runs)
    return result


# -- C: vllm-batch ----------------------------------------------------------------


def run_batch_via_api(client, path, timeout, watch):
    """Uploads, creates and polls one batch; returns (batch, timings, load)."""
    meter = LoadMeter()
    started = time.monotonic()
    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    upload_s = time.monotonic() - started
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    created_s = time.monotonic() - started
    seen = {batch.status: created_s}
    deadline = started + timeout
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch.id} still {batch.status} after {timeout} s")
        for proc in watch:
            if proc.poll() is not None:
                raise RuntimeError(f"a server process exited ({proc.args[:3]}) while batch {batch.id} ran")
        time.sleep(POLL_SECONDS)
        batch = client.batches.retrieve(batch.id)
        seen.setdefault(batch.status, time.monotonic() - started)
    total = time.monotonic() - started
    load = meter.stop()
    timings = {"total_s": total, "upload_s": upload_s, "create_done_s": created_s, "status_first_seen_s": seen}
    return batch, timings, load


class VllmBatch:
    """vllm-batch on the dev stack (devtools/devstack.py) with a fresh var dir:
    gunicorn + qcluster, warmed by a small batch."""

    def __init__(self, model, warm_file, out):
        self.out = out
        self.runs = []
        self.var_dir = Path(tempfile.mkdtemp(prefix="var-", dir=out))
        log(f"C: vllm-batch, var dir {self.var_dir} (its logs are there)")
        self.stack = Stack(self.var_dir, env=base_env())
        self.stack.manage("migrate", "--noinput", timeout=COMMAND_TIMEOUT)
        self.stack.manage(
            "register_model",
            MODEL_NAME,
            str(model),
            "--max-model-len",
            MAX_MODEL_LEN,
            "--gpu-memory-utilization",
            GPU_MEM,
            timeout=COMMAND_TIMEOUT,
        )
        key = self.stack.create_api_key("bench")
        try:
            self.stack.start_web(workers=2)
            self.stack.start_worker()
        except BaseException:
            self.stack.stop()
            raise
        OUR_GROUPS.update((self.stack.web.pid, self.stack.worker.pid))  # each runs in a session of its own
        self.client = openai.OpenAI(base_url=self.stack.base_url, api_key=key, timeout=120, max_retries=2)
        self.warm_file = warm_file

    def warm_up(self):
        log("C: warm-up batch (worker start + engine load)")
        warm, timings, _ = run_batch_via_api(self.client, self.warm_file, WARM_BATCH_TIMEOUT, self.watch)
        if warm.status != "completed":
            raise RuntimeError(f"warm-up batch ended {warm.status}: {warm.errors}; see {self.var_dir}")
        self.warmup = {"requests": warm.request_counts.total, **timings}
        log(f"C: warm-up batch ({warm.request_counts.total} requests) completed in {timings['total_s']:.1f} s")

    @property
    def watch(self):
        return [self.stack.web, self.stack.worker]

    def run(self, requests_file, number):
        count = len(read_ids(requests_file))
        batch, timings, load = run_batch_via_api(self.client, requests_file, TIMED_BATCH_TIMEOUT, self.watch)
        if batch.status != "completed":
            raise RuntimeError(f"batch ended {batch.status}: {batch.errors}; see {self.var_dir}")
        content = self.client.files.content(batch.output_file_id).content
        (self.out / f"vllm_batch_out_{number}.jsonl").write_bytes(content)
        check = check_output(content, read_ids(requests_file))
        run = {
            "input": str(requests_file),
            "batch_id": batch.id,
            "requests": count,
            "seconds": timings["total_s"],
            "req_per_s": count / timings["total_s"],
            "timings": timings,
            "request_counts": batch.request_counts.model_dump() if batch.request_counts else None,
            "error_file_id": batch.error_file_id,
            "server_timestamps": {
                k: getattr(batch, k) for k in ("created_at", "in_progress_at", "finalizing_at", "completed_at")
            },
            "output_check": check,
            "load": load,
        }
        self.runs.append(run)
        seen = timings["status_first_seen_s"]
        log(
            f"C run {number}: {count} requests in {timings['total_s']:.2f} s = {run['req_per_s']:.1f} req/s "
            f"(in_progress seen at {seen.get('in_progress', float('nan')):.2f} s, "
            f"finalizing at {seen.get('finalizing', float('nan')):.2f} s); "
            f"output ok={check['ok']} ({check['lines']} lines)" + load_note(load)
        )
        return run

    def stop(self):
        # The worker first: it unloads the engine on the way out.
        self.stack.stop()

    def result(self):
        return {
            "warmup": getattr(self, "warmup", None),
            "runs": self.runs,
            "req_per_s": median(r["req_per_s"] for r in self.runs),
            "seconds": median(r["seconds"] for r in self.runs),
            "output_ok": all(r["output_check"]["ok"] for r in self.runs),
            "var_dir": str(self.var_dir),
        }


def bench_interleaved(procs, parts, model, request_files, warm_file, args, out, logs, results):
    """A and C both warm, their timed runs alternating A,C / C,A / A,C ... on the same
    prompt files, so drift in the machine's speed hits both alike."""
    a = c = None
    try:
        if "A" in parts:
            a = ReferenceA(procs, model, args.max_tokens, logs, args.a_engine_args)
            a.wait_ready()  # one engine start at a time
        if "C" in parts:
            c = VllmBatch(model, warm_file, out)
            c.warm_up()
        for k, requests_file in enumerate(request_files, 1):
            order = [a, c] if k % 2 else [c, a]
            for part in order:
                if part is not None:
                    # vLLM's worker keeps polling for a few seconds after its engine
                    # went idle; let it settle so it does not slow the next run.
                    time.sleep(args.settle)
                    part.run(requests_file, k)
    finally:
        for part, key in ((a, "llm_chat"), (c, "vllm_batch")):
            if part is not None:
                if part.runs:
                    results[key] = part.result()
                part.stop()


# -- report -----------------------------------------------------------------------


def _runs_text(values, fmt="{:.1f}"):
    return ", ".join(fmt.format(v) for v in values) if len(values) > 1 else ""


def report(results, out):
    a = results.get("llm_chat")
    b = results.get("run_batch")
    c = results.get("vllm_batch")
    rows = []
    if a:
        rows.append(
            (
                "A   vLLM LLM.chat, warm (engine start excluded)",
                a["req_per_s"],
                a["seconds"],
                [r["req_per_s"] for r in a["runs"]],
                [r["load"] for r in a["runs"]],
            )
        )
    if b:
        runs = b["runs"]
        rows.append(
            (
                "B   vLLM run_batch, total (engine start included)",
                b["req_per_s_total"],
                b["total_s"],
                [r["req_per_s_total"] for r in runs],
                [None for _ in runs],
            )
        )
        if b.get("req_per_s_processing_log"):
            rows.append(
                (
                    "B'  vLLM run_batch, processing only (log)",
                    b["req_per_s_processing_log"],
                    b["processing_s_from_log"],
                    [r["req_per_s_processing_log"] for r in runs if r.get("req_per_s_processing_log")],
                    [r.get("load") for r in runs if r.get("req_per_s_processing_log")],
                )
            )
        if b.get("req_per_s_processing_minus_1req_run"):
            values = [r["req_per_s_processing_minus_1req_run"] for r in runs if r.get("processing_s_minus_1req_run")]
            rows.append(
                (
                    "B'' vLLM run_batch, total minus a 1-request run",
                    b["req_per_s_processing_minus_1req_run"],
                    median(r["processing_s_minus_1req_run"] for r in runs if r.get("processing_s_minus_1req_run")),
                    values,
                    [None for _ in values],
                )
            )
    if c:
        rows.append(
            (
                "C   vllm-batch, warm worker (submit -> completed)",
                c["req_per_s"],
                c["seconds"],
                [r["req_per_s"] for r in c["runs"]],
                [r["load"] for r in c["runs"]],
            )
        )
    ratios = {}
    if a and c:
        ratios["vllm_batch_over_llm_chat"] = c["req_per_s"] / a["req_per_s"]
        # Run k of A and run k of C ran back to back on the same prompts.
        paired = [rc["req_per_s"] / ra["req_per_s"] for ra, rc in zip(a["runs"], c["runs"], strict=False)]
        if len(paired) > 1:
            ratios["vllm_batch_over_llm_chat_paired_runs"] = paired
            ratios["vllm_batch_over_llm_chat_paired_median"] = median(paired)
    if b and c and b.get("req_per_s_processing"):
        ratios["vllm_batch_over_run_batch_processing"] = c["req_per_s"] / b["req_per_s_processing"]
    if b and c:
        ratios["vllm_batch_over_run_batch_total"] = c["req_per_s"] / b["req_per_s_total"]
    results["ratios"] = ratios
    results["table"] = [
        {"what": label, "req_per_s": rps, "seconds": seconds, "runs_req_per_s": each}
        for label, rps, seconds, each, _ in rows
    ]

    width = max((len(r[0]) for r in rows), default=40)
    print()
    print(f"{'':{width}}  {'req/s':>7}  {'seconds':>8}  {'others CPU %':>12}  runs (req/s)")
    for label, rps, seconds, each, loads in rows:
        others = [ld["others_pct"] for ld in loads if ld]
        others_text = "/".join(f"{x:.0f}" for x in others) if others else "-"
        print(f"{label:{width}}  {rps:7.1f}  {seconds:8.2f}  {others_text:>12}  {_runs_text(each)}")
    print("(median over runs; 'others CPU %' = share of all CPUs used by other processes during each timed window)")
    print()
    if "vllm_batch_over_llm_chat" in ratios:
        ratio = ratios["vllm_batch_over_llm_chat"]
        verdict = "meets" if ratio >= 0.95 else "BELOW"
        print(f"vllm-batch / LLM.chat                  = {ratio:.3f}  ({verdict} the 0.95 target)")
        if "vllm_batch_over_llm_chat_paired_runs" in ratios:
            each = ", ".join(f"{x:.3f}" for x in ratios["vllm_batch_over_llm_chat_paired_runs"])
            print(
                f"  run by run (back to back)            = {each}; "
                f"median {ratios['vllm_batch_over_llm_chat_paired_median']:.3f}"
            )
    if "vllm_batch_over_run_batch_processing" in ratios:
        print(f"vllm-batch / run_batch processing-only = {ratios['vllm_batch_over_run_batch_processing']:.3f}")
    if "vllm_batch_over_run_batch_total" in ratios:
        print(f"vllm-batch / run_batch total           = {ratios['vllm_batch_over_run_batch_total']:.3f}")
    all_loads = [ld for row in rows for ld in row[4] if ld]
    if any(noisy(ld) for ld in all_loads):
        print(f"NOTE: other processes used more than {NOISY_OTHERS_PCT}% of the CPUs during some timed windows.")
    for name, part in (("run_batch", b), ("vllm-batch", c)):
        if part and not part["output_ok"]:
            print(f"OUTPUT CHECK FAILED for {name}: {[r['output_check'] for r in part['runs']]}")
    text = json.dumps(results, indent=2, default=str)
    path = out / "bench.json"
    path.write_text(text)
    stamp = results["started_at"].replace(":", "").replace("-", "")[:15]
    (out / f"bench-{stamp}.json").write_text(text)
    print(f"\nwrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per part, on different prompts (median)")
    parser.add_argument(
        "--settle", type=float, default=10, help="seconds of quiet before each timed A or C run (default 10)"
    )
    parser.add_argument("--warmup-requests", type=int, default=20, help="size of vllm-batch's warm-up batch")
    parser.add_argument("--out", help="output directory (default: a new temporary directory); the model is reused")
    parser.add_argument(
        "--a-engine-args",
        default="{}",
        help='more vllm.LLM arguments for reference A, JSON, e.g. \'{"scheduling_policy": "priority"}\'',
    )
    parser.add_argument(
        "--only", default="A,B,C", help="comma-separated subset of A (LLM.chat), B (run_batch), C (vllm-batch)"
    )
    args = parser.parse_args()
    parts = {p.strip().upper() for p in args.only.split(",") if p.strip()}
    if args.requests < 1 or args.max_tokens < 1 or args.repeat < 1:
        parser.error("--requests, --max-tokens and --repeat must be at least 1")
    try:
        if not isinstance(json.loads(args.a_engine_args), dict):
            raise ValueError("not an object")
    except ValueError as exc:
        parser.error(f"--a-engine-args must be a JSON object: {exc}")

    out = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="vllm-batch-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    log(f"output directory {out}")

    model = build_model(out)
    request_files = [
        write_requests(
            out / ("requests.jsonl" if k == 0 else f"requests_{k + 1}.jsonl"),
            args.requests,
            args.max_tokens,
            "req" if k == 0 else f"req{k + 1}",
            seed=1 + k,
        )
        for k in range(args.repeat)
    ]
    one_file = write_requests(out / "one_request.jsonl", 1, args.max_tokens, "one", seed=1000)
    warm_file = write_requests(out / "warmup.jsonl", args.warmup_requests, args.max_tokens, "warm", seed=1001)

    results = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "repeat": args.repeat,
        "model": str(model),
        "cpus": os.cpu_count(),
        "VLLM_CPU_KVCACHE_SPACE": base_env()["VLLM_CPU_KVCACHE_SPACE"],
    }
    from importlib import metadata

    for dist in ("vllm-cpu", "vllm"):
        try:
            results["vllm_version"] = f"{dist} {metadata.version(dist)}"
            break
        except metadata.PackageNotFoundError:
            pass
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, timeout=10)
        results["git"] = {
            "head": head.stdout.decode().strip(),
            "dirty_files": [line[3:] for line in dirty.stdout.decode().splitlines()],
        }
    except (OSError, subprocess.SubprocessError):
        pass

    procs = Procs()
    failed = None
    try:
        if parts & {"A", "C"}:
            bench_interleaved(procs, parts, model, request_files, warm_file, args, out, logs, results)
        if "B" in parts:
            # Alone, after A and C are stopped: each run starts its own engine.
            results["run_batch"] = bench_run_batch(procs, model, request_files, one_file, args.requests, out, logs)
    except BaseException as exc:
        failed = exc
        results["error"] = repr(exc)
        log(f"FAILED: {exc!r}")
    finally:
        procs.stop_all()
    report(results, out)
    if failed is not None:
        if isinstance(failed, KeyboardInterrupt):
            raise failed
        return 1
    checks = [results[k]["output_ok"] for k in ("run_batch", "vllm_batch") if k in results]
    return 0 if all(checks) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_llm_chat":
        child_llm_chat(sys.argv[2:])
    else:
        sys.exit(main())
