"""Throughput benchmark: vllm-batch against plain vLLM, on the embedded tiny model.

Rows (every timed run printed, medians, ratios of back-to-back runs):

  A   plain vLLM, warm: LLM.chat(all conversations) at vLLM's default engine
      arguments, in a child process, timed after engine start and a warm-up;
  A'  the same with exactly the worker's engine arguments
      (workers.engine.vllm_engine.llm_kwargs of the registered model);
  B   vLLM's own batch runner, `python -m vllm.entrypoints.openai.run_batch`,
      end to end (engine start included) and processing only (from its "Reading
      batch" log line to its output file);
  C   vllm-batch, warm worker, on the dev stack (devtools/devstack.py: gunicorn
      + qcluster, SQLite, ORM broker): upload + create -> "completed" through the
      openai SDK, output checked;
  R   the realistic workload (bench/workloads.py: shared system prompts, varied
      user prompts and max_tokens, natural stops) through A, A' and C, in file order.

A, A' and C are all started and warmed first; then come --pairs rounds. Each
round times A, A' and C back to back on one new synthetic file (the order turns
from round to round), then the same on one new realistic file, so drift in the
machine's speed hits both sides of a ratio alike. Every pair is checked for equal
work: the same number of output tokens on both sides (the run fails if not).

Also measured: the CPU seconds per 1000 requests of vllm-batch's worker (the
cluster's processes minus vLLM's EngineCore) and web, and of LLM.chat's own
process (minus its EngineCore); submit -> in_progress with an idle warm worker,
on the ORM broker and on the Redis broker (a second stack).

    .venv/bin/python bench/run_batch_bench.py [--pairs 5] [--requests 2000] [--quick] [--out DIR]

The hidden sub-command `_llm_chat` is the child process of A and A'.
"""

import argparse
import json
import os
import queue
import shutil
import signal
import sqlite3
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

from bench import workloads  # noqa: E402
from devtools.devstack import Stack  # noqa: E402
from devtools.tiny_model import build_tiny_model  # noqa: E402

MODEL_NAME = workloads.MODEL_NAME
GPU_MEM = "0.3"
MAX_MODEL_LEN = "2048"

# Time bounds (seconds) for every wait.
ENGINE_RUN_TIMEOUT = 1800  # one reference process, engine start included
COMMAND_TIMEOUT = 300  # manage.py commands
WARM_BATCH_TIMEOUT = 600  # first batch: worker start + engine load
TIMED_BATCH_TIMEOUT = 1800
LATENCY_TIMEOUT = 60
STOP_TIMEOUT = 45  # SIGTERM -> SIGKILL
# The timed batches' end comes from the database (completed_at), so the client need
# not poll often: every poll is a request the web process serves on the same CPUs.
POLL_SECONDS = 1.0
LATENCY_POLL_SECONDS = 0.02
LATENCY_GOAL_S = 0.5
REDIS_DB = 11  # the e2e tests use 7

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


def build_model(out):
    path = out / MODEL_NAME
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        log(f"reusing tiny model at {path}")
        return path
    started = time.monotonic()
    build_tiny_model(path)
    log(f"built tiny model at {path} in {time.monotonic() - started:.1f} s")
    return path


def is_engine_core(process):
    """vLLM's engine processes retitle themselves VLLM::EngineCore and the like."""
    try:
        return " ".join(process.cmdline()).startswith("VLLM::") or process.name().startswith("VLLM::")
    except (psutil.Error, OSError):
        return False


def process_title(process):
    try:
        cmdline = process.cmdline()
        if cmdline and cmdline[0].startswith("VLLM::"):
            return cmdline[0]
        # django-q2 names its processes (setproctitle): "qcluster <name> Sentinel" and so on.
        return " ".join(cmdline[:4])[-60:] or process.name()
    except (psutil.Error, OSError):
        return "?"


def cpu_split(processes):
    """{pid: (cpu seconds, is engine, title)} of the processes still there."""
    found = {}
    for p in processes:
        try:
            t = p.cpu_times()
            found[p.pid] = (t.user + t.system, is_engine_core(p), process_title(p))
        except (psutil.Error, OSError):
            continue
    return found


def cpu_delta(before, after, by_process=None):
    """CPU seconds used between two cpu_split()s: (outside the engine, in the engine);
    fills `by_process` {title: seconds} when given."""
    app = engine = 0.0
    for pid, (t, in_engine, title) in after.items():
        used = t - before.get(pid, (0.0,))[0]
        if by_process is not None and used >= 0.005:
            key = f"{pid} {title}"
            by_process[key] = round(by_process.get(key, 0.0) + used, 3)
        if in_engine:
            engine += used
        else:
            app += used
    return app, engine


def check_output(path_or_bytes, expected_ids):
    """Checks a batch output JSONL: one line per custom_id, each a 200 response."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        text = path_or_bytes.decode("utf-8")
    else:
        text = Path(path_or_bytes).read_text()
    # JSONL lines end at "\n" only: splitlines() would also break inside strings holding U+2028.
    lines = [line for line in text.split("\n") if line.strip()]
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


# -- A and A': plain vLLM LLM.chat -------------------------------------------------

PROTOCOL = "@@bench "  # prefix of the A child's result lines on stdout (vLLM logs there too)


def worker_llm_kwargs(model, var_dir):
    """Exactly the vllm.LLM arguments a worker uses for the bench's registered model."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "devtools.settings")
    os.environ["VLLM_BATCH_VAR_DIR"] = str(var_dir)
    import django

    django.setup()
    from workers.engine.vllm_engine import llm_kwargs
    from workers.models import RegisteredModel

    registered = RegisteredModel(
        name=MODEL_NAME, path=str(model), gpu_memory_utilization=float(GPU_MEM), max_model_len=int(MAX_MODEL_LEN)
    )
    return llm_kwargs(registered.engine_args())


def sampling_for(bodies, sampling_params):
    """One SamplingParams per request from its body, shared between equal ones."""
    made = {}
    params = []
    for body in bodies:
        stop = tuple(body.get("stop") or ())
        key = (body["max_tokens"], body.get("temperature", 1.0), body.get("ignore_eos", False), body.get("seed"), stop)
        if key not in made:
            made[key] = sampling_params(
                max_tokens=key[0], temperature=key[1], ignore_eos=key[2], seed=key[3], stop=list(stop) or None
            )
        params.append(made[key])
    return params


def child_llm_chat(argv):
    """The child of A or A': load, warm up, then time one LLM.chat per command read
    from stdin ({"path": ..., "groups": [...]}), answering each with a result line;
    "quit" or end of input stops it."""
    parser = argparse.ArgumentParser(prog="run_batch_bench.py _llm_chat")
    parser.add_argument("--model", required=True)
    parser.add_argument("--engine-args", default="{}", help="more vllm.LLM arguments, JSON")
    parser.add_argument("--worker-args", help="use the worker's engine arguments; a var dir for its settings")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    if args.worker_args:
        kwargs = worker_llm_kwargs(args.model, args.worker_args)
    else:
        kwargs = {"model": args.model, "gpu_memory_utilization": float(GPU_MEM), "max_model_len": int(MAX_MODEL_LEN)}
    kwargs.update(json.loads(args.engine_args))

    import vllm
    from vllm import SamplingParams

    def say(event, **data):
        print(PROTOCOL + json.dumps({"event": event, **data}, default=str), flush=True)

    started = time.monotonic()
    llm = vllm.LLM(**kwargs)
    engine_start = time.monotonic() - started
    warm = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False)  # noqa: SIM115
    warm.close()
    bodies = workloads.read_bodies(workloads.write_synthetic(warm.name, 32, 16, "warm", seed=12345))
    os.unlink(warm.name)
    llm.chat([b["messages"] for b in bodies], sampling_for(bodies, SamplingParams), use_tqdm=False)
    say("ready", engine_start_s=engine_start, engine_args=kwargs)
    me = psutil.Process()

    for command in sys.stdin:
        if not command.strip() or command.strip() == "quit":
            break
        command = json.loads(command)
        OUR_GROUPS.update(command["groups"])  # the parent's processes count as ours, not as noise
        bodies = workloads.read_bodies(command["path"])
        conversations = [b["messages"] for b in bodies]
        params = sampling_for(bodies, SamplingParams)
        meter = LoadMeter()
        cpu_before = cpu_split([me, *me.children(recursive=True)])
        started = time.monotonic()
        outputs = llm.chat(conversations, params, use_tqdm=False)
        seconds = time.monotonic() - started
        app_cpu, engine_cpu = cpu_delta(cpu_before, cpu_split([me, *me.children(recursive=True)]))
        load = meter.stop()
        say(
            "run",
            input=command["path"],
            requests=len(conversations),
            outputs=len(outputs),
            seconds=seconds,
            req_per_s=len(conversations) / seconds,
            completion_tokens=sum(len(o.outputs[0].token_ids) for o in outputs),
            stopped=sum(1 for o in outputs if o.outputs[0].finish_reason == "stop"),
            cpu={"app_s": app_cpu, "engine_s": engine_cpu},
            load=load,
        )
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:
        pass


class ReferenceA:
    """An LLM.chat child, kept warm so its timed runs can alternate with vllm-batch's."""

    def __init__(self, procs, label, model, logs, engine_args="{}", worker_var_dir=None):
        self.procs = procs
        self.label = label
        self.events = queue.Queue()
        self.log_path = logs / f"llm_chat_{'worker_args' if worker_var_dir else 'defaults'}.log"
        self.runs = []
        command = [PYTHON, str(Path(__file__).resolve()), "_llm_chat", "--model", str(model)]
        command += ["--engine-args", engine_args]
        if worker_var_dir:
            command += ["--worker-args", str(worker_var_dir)]
        self.proc = procs.start(command, self.log_path, base_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
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
            raise RuntimeError(f"{self.label}: no {what} from the LLM.chat child within {timeout} s") from None
        if event["event"] == "exit":
            raise RuntimeError(f"{self.label}: the LLM.chat child exited; see {self.log_path}")
        return event

    def wait_ready(self):
        log(f"{self.label}: starting LLM.chat (engine start + warm-up not timed)")
        self.ready = self._next(ENGINE_RUN_TIMEOUT, "ready")
        log(f"{self.label}: engine up in {self.ready['engine_start_s']:.1f} s; arguments {self.ready['engine_args']}")

    def run(self, path, name):
        self.proc.stdin.write((json.dumps({"path": str(path), "groups": sorted(OUR_GROUPS)}) + "\n").encode())
        self.proc.stdin.flush()
        run = self._next(TIMED_BATCH_TIMEOUT, "result")
        run["cpu"]["app_s_per_1000"] = 1000 * run["cpu"]["app_s"] / run["requests"]
        log(
            f"{self.label} {name}: {run['requests']} requests in {run['seconds']:.2f} s = "
            f"{run['req_per_s']:.1f} req/s, "
            f"{run['completion_tokens']} output tokens ({run['stopped']} stopped), "
            f"process CPU {run['cpu']['app_s']:.2f} s outside the engine" + load_note(run["load"])
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
        run["output_check"] = check_output(output, workloads.read_ids(requests_file))
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


def run_batch_via_api(client, path, timeout, watch, poll=POLL_SECONDS):
    """Uploads, creates and polls one batch; returns (batch, timings, load)."""
    meter = LoadMeter()
    started_wall = time.time()
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
        time.sleep(poll)
        batch = client.batches.retrieve(batch.id)
        seen.setdefault(batch.status, time.monotonic() - started)
    total = time.monotonic() - started
    load = meter.stop()
    timings = {
        "total_s": total,
        "started_wall": started_wall,
        "upload_s": upload_s,
        "create_done_s": created_s,
        "status_first_seen_s": seen,
    }
    return batch, timings, load


def _db_time(value):
    """A datetime column as SQLite holds it (Django writes UTC) -> Unix time."""
    if not value:
        return None
    stamp = datetime.fromisoformat(value)
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


class VllmBatch:
    """vllm-batch on the dev stack (devtools/devstack.py) with a fresh var dir:
    gunicorn + qcluster, warmed by a small batch. `env` adds to the stack's
    environment (REDIS_URL for the Redis broker)."""

    def __init__(self, model, warm_file, out, label="C", env=None, web_workers=2):
        self.out = out
        self.label = label
        self.runs = []
        self.var_dir = Path(tempfile.mkdtemp(prefix="var-", dir=out))
        log(f"{label}: vllm-batch, var dir {self.var_dir} (its logs are there)")
        self.stack = Stack(self.var_dir, env={**base_env(), **(env or {})})
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
            self.stack.start_web(workers=web_workers)
            self.stack.start_worker()
        except BaseException:
            self.stack.stop()
            raise
        OUR_GROUPS.update((self.stack.web.pid, self.stack.worker.pid))  # each runs in a session of its own
        self.client = openai.OpenAI(base_url=self.stack.base_url, api_key=key, timeout=120, max_retries=2)
        self.warm_file = warm_file

    def warm_up(self):
        log(f"{self.label}: warm-up batch (worker start + engine load)")
        warm, timings, _ = run_batch_via_api(self.client, self.warm_file, WARM_BATCH_TIMEOUT, self.watch)
        if warm.status != "completed":
            raise RuntimeError(f"warm-up batch ended {warm.status}: {warm.errors}; see {self.var_dir}")
        self.warmup = {"requests": warm.request_counts.total, **timings}
        log(
            f"{self.label}: warm-up batch ({warm.request_counts.total} requests) "
            f"completed in {timings['total_s']:.1f} s"
        )

    @property
    def watch(self):
        return [self.stack.web, self.stack.worker]

    def _web_processes(self):
        try:
            main = psutil.Process(self.stack.web.pid)
            return [main, *main.children(recursive=True)]
        except psutil.Error:
            return []

    def run(self, requests_file, name):
        ids = workloads.read_ids(requests_file)
        worker_before = cpu_split(self.stack.worker_processes())
        web_before = cpu_split(self._web_processes())
        batch, timings, load = run_batch_via_api(self.client, requests_file, TIMED_BATCH_TIMEOUT, self.watch)
        by_process = {}
        worker_s, engine_s = cpu_delta(worker_before, cpu_split(self.stack.worker_processes()), by_process)
        web_s, _ = cpu_delta(web_before, cpu_split(self._web_processes()))
        if batch.status != "completed":
            raise RuntimeError(f"batch ended {batch.status}: {batch.errors}; see {self.var_dir}")
        # Upload start -> completed_at in the database: no poll interval in the figure.
        stamps = self.stamps(batch.id)
        if stamps.get("completed_at"):
            timings["polled_total_s"] = timings["total_s"]
            timings["total_s"] = stamps["completed_at"] - timings["started_wall"]
            timings["server_s"] = {k: v - timings["started_wall"] for k, v in stamps.items() if v}
        content = self.client.files.content(batch.output_file_id).content
        (self.out / f"vllm_batch_out_{name.replace(' ', '_')}.jsonl").write_bytes(content)
        check = check_output(content, ids)
        count = len(ids)
        run = {
            "input": str(requests_file),
            "batch_id": batch.id,
            "requests": count,
            "seconds": timings["total_s"],
            "req_per_s": count / timings["total_s"],
            "completion_tokens": check["completion_tokens"],
            "timings": timings,
            "request_counts": batch.request_counts.model_dump() if batch.request_counts else None,
            "error_file_id": batch.error_file_id,
            "output_check": check,
            "cpu": {
                "app_s": worker_s,
                "engine_s": engine_s,
                "web_s": web_s,
                "app_s_per_1000": 1000 * worker_s / count,
                "web_s_per_1000": 1000 * web_s / count,
                "worker_by_process": by_process,
            },
            "load": load,
        }
        self.runs.append(run)
        seen = timings.get("server_s") or {}
        log(
            f"{self.label} {name}: {count} requests in {timings['total_s']:.2f} s = {run['req_per_s']:.1f} req/s, "
            f"{check['completion_tokens']} output tokens "
            f"(in_progress at {seen.get('in_progress_at', float('nan')):.2f} s, "
            f"finalizing at {seen.get('finalizing_at', float('nan')):.2f} s); worker CPU {worker_s:.2f} s outside the "
            f"engine, web {web_s:.2f} s; output ok={check['ok']}" + load_note(load)
        )
        return run

    def stamps(self, batch_id):
        """The batch's created_at ... completed_at from the stack's database, as Unix times."""
        names = ("created_at", "in_progress_at", "finalizing_at", "completed_at")
        with sqlite3.connect(self.var_dir / "db.sqlite3", timeout=30) as db:
            row = db.execute(f"SELECT {', '.join(names)} FROM jobs_batch WHERE id = ?", (batch_id,)).fetchone()
        return {name: _db_time(value) for name, value in zip(names, row or (), strict=False)}

    def submit_latency(self, one_file, samples, idle):
        """submit -> in_progress of a 1-request batch with the worker idle and warm:
        from the database's created_at/in_progress_at, and as the client sees it
        (create returned -> first poll, every 20 ms, that is past validating)."""
        with open(one_file, "rb") as f:
            uploaded = self.client.files.create(file=f, purpose="batch")
        found = []
        for _ in range(samples):
            time.sleep(idle)
            started = time.monotonic()
            batch = self.client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            client_s = None
            deadline = started + LATENCY_TIMEOUT
            while batch.status not in ("completed", "failed", "expired", "cancelled"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.label}: batch {batch.id} still {batch.status} after {LATENCY_TIMEOUT} s")
                time.sleep(LATENCY_POLL_SECONDS)
                batch = self.client.batches.retrieve(batch.id)
                if client_s is None and batch.status != "validating":
                    client_s = time.monotonic() - started
            if client_s is None:
                client_s = time.monotonic() - started
            stamps = self.stamps(batch.id)
            server_s = stamps["in_progress_at"] - stamps["created_at"] if stamps.get("in_progress_at") else None
            found.append({"server_s": server_s, "client_s": client_s, "status": batch.status})
        result = {
            "samples": found,
            "server_median_s": median(s["server_s"] for s in found if s["server_s"] is not None),
            "server_max_s": max((s["server_s"] for s in found if s["server_s"] is not None), default=None),
            "client_median_s": median(s["client_s"] for s in found),
        }
        log(
            f"{self.label}: submit -> in_progress, idle warm worker: "
            + ", ".join(f"{s['server_s']:.3f}" for s in found if s["server_s"] is not None)
            + f" s (database); client-observed median {result['client_median_s']:.3f} s"
        )
        return result

    def stop(self):
        # The worker first: it unloads the engine on the way out.
        self.stack.stop()


def latency_on_redis(model, warm_file, one_file, out, args):
    """A second stack on the Redis broker, only for submit -> in_progress."""
    import redis

    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    stack = VllmBatch(
        model,
        warm_file,
        out,
        label="C-redis",
        env={"REDIS_URL": url, "Q_CLUSTER_NAME": f"bench{os.getpid()}"},
        web_workers=1,
    )
    try:
        stack.warm_up()
        return stack.submit_latency(one_file, args.latency_samples, args.idle)
    finally:
        stack.stop()
        redis.Redis.from_url(url).flushdb()


# -- rounds -------------------------------------------------------------------------

WORKLOADS = ("synthetic", "realistic")
SIDES = ("A", "A'", "C")


def bench_rounds(procs, parts, model, files, warm_file, one_file, args, out, logs, results):
    """A, A' and C all warm; then per round each times the round's synthetic file
    back to back (the order turning from round to round), then its realistic file."""
    sides = {}
    runs = results["runs"] = {w: {s: [] for s in SIDES} for w in WORKLOADS}
    try:
        if "A" in parts:
            sides["A"] = ReferenceA(procs, "A", model, logs, args.a_engine_args)
            sides["A"].wait_ready()  # one engine start at a time
        if "A'" in parts:
            sides["A'"] = ReferenceA(procs, "A'", model, logs, worker_var_dir=Path(tempfile.mkdtemp(dir=out)))
            sides["A'"].wait_ready()
        if "C" in parts:
            sides["C"] = VllmBatch(model, warm_file, out)
            sides["C"].warm_up()
        results["engine_args"] = {s: sides[s].ready["engine_args"] for s in ("A", "A'") if s in sides}
        order = [s for s in SIDES if s in sides]
        for k in range(args.pairs):
            turn = order[k % len(order) :] + order[: k % len(order)]
            for workload in WORKLOADS:
                path = files[workload][k]
                if path is None:
                    continue
                for side in turn:
                    # vLLM's engines keep polling for a few seconds after going idle;
                    # let them settle so they do not slow the next run.
                    time.sleep(args.settle)
                    run = sides[side].run(path, f"{workload} round {k + 1}")
                    run["round"] = k + 1
                    runs[workload][side].append(run)
        if "C" in sides and args.latency_samples:
            results["latency_orm"] = sides["C"].submit_latency(one_file, args.latency_samples, args.idle)
    finally:
        for side in sides.values():
            side.stop()
    if "C" in parts and args.latency_samples and args.redis:
        results["latency_redis"] = latency_on_redis(model, warm_file, one_file, out, args)


def pair_ratios(results):
    """Per workload and reference: vllm-batch / LLM.chat of each round (same file,
    back to back), and whether both did the same work (output tokens)."""
    found = {}
    for workload in WORKLOADS:
        runs = results["runs"].get(workload, {})
        for ref in ("A", "A'"):
            pairs = []
            for a, c in zip(runs.get(ref, []), runs.get("C", []), strict=False):
                pairs.append(
                    {
                        "round": a["round"],
                        "ratio": c["req_per_s"] / a["req_per_s"],
                        "tokens": [a["completion_tokens"], c["completion_tokens"]],
                        "equal_work": a["completion_tokens"] == c["completion_tokens"],
                    }
                )
            if pairs:
                found[f"{workload} C/{ref}"] = {
                    "pairs": pairs,
                    "median": median(p["ratio"] for p in pairs),
                    "equal_work": all(p["equal_work"] for p in pairs),
                }
    return found


# -- report -----------------------------------------------------------------------

ROW_LABELS = {
    "A": "LLM.chat, vLLM's default engine arguments",
    "A'": "LLM.chat, the worker's engine arguments",
    "C": "vllm-batch, warm worker (submit -> completed)",
}
GOALS = {"A": 0.95, "A'": 1.00}
B_PROCESSING_LABEL = "B'  vLLM run_batch, processing only (log)"


def _each(values, fmt="{:.1f}"):
    return ", ".join(fmt.format(v) for v in values)


def _others(runs):
    return "/".join(f"{r['load']['others_pct']:.0f}" for r in runs if r.get("load")) or "-"


def report(results, out):
    print()
    print(f"== vllm-batch benchmark, {results['started_at']}, commit {results.get('git', {}).get('head')} ==")
    print("(shared machine: absolute req/s drift; read the back-to-back ratios and the CPU seconds)")
    ratios = results["ratios"] = pair_ratios(results)
    for workload in WORKLOADS:
        runs = results.get("runs", {}).get(workload, {})
        if not any(runs.values()):
            continue
        print()
        print(f"-- {workload} workload: {results['workloads'][workload]} --")
        print(f"{'row':<52} {'req/s':>7}  {'others CPU %':>14}  runs (req/s)")
        for side in SIDES:
            if runs.get(side):
                rps = median(r["req_per_s"] for r in runs[side])
                label = f"{'R-' if workload == 'realistic' else ''}{side:<3} {ROW_LABELS[side]}"
                print(f"{label:<52} {rps:7.1f}  {_others(runs[side]):>14}  {_each(r['req_per_s'] for r in runs[side])}")
        b = results.get("run_batch") if workload == "synthetic" else None
        if b:
            print(
                f"{'B   vLLM run_batch, total (engine start included)':<52} {b['req_per_s_total']:7.1f}  "
                f"{'-':>14}  {_each(r['req_per_s_total'] for r in b['runs'])}"
            )
            if b.get("req_per_s_processing_log"):
                each = [r["req_per_s_processing_log"] for r in b["runs"] if r.get("req_per_s_processing_log")]
                print(f"{B_PROCESSING_LABEL:<52} {b['req_per_s_processing_log']:7.1f}  {'-':>14}  {_each(each)}")
        for ref in ("A", "A'"):
            entry = ratios.get(f"{workload} C/{ref}")
            if not entry:
                continue
            verdict = "meets" if entry["median"] >= GOALS[ref] else "BELOW"
            print(
                f"C/{ref:<2} run by run: {_each((p['ratio'] for p in entry['pairs']), '{:.3f}')}; "
                f"median {entry['median']:.3f} ({verdict} the {GOALS[ref]:.2f} goal)"
            )
            tokens = "; ".join(f"{p['tokens'][0]}/{p['tokens'][1]}" for p in entry["pairs"])
            print(f"      output tokens {ref}/C per round: {tokens} -> {'equal' if entry['equal_work'] else 'UNEQUAL'}")
        b_processing = (results.get("run_batch") or {}).get("req_per_s_processing") if workload == "synthetic" else None
        if b_processing and runs.get("C"):
            print(f"C/B' (medians) = {median(r['req_per_s'] for r in runs['C']) / b_processing:.3f}")

    print()
    print("-- CPU seconds per 1000 requests outside vLLM's EngineCore (median over runs) --")
    for workload in WORKLOADS:
        runs = results.get("runs", {}).get(workload, {})
        parts = []
        for side in SIDES:
            if runs.get(side):
                cpu = [r["cpu"] for r in runs[side]]
                name = {"A": "LLM.chat process (A)", "A'": "LLM.chat process (A')", "C": "vllm-batch worker"}[side]
                text = f"{name} {median(c['app_s_per_1000'] for c in cpu):.3f}"
                if side == "C":
                    text += f", web {median(c['web_s_per_1000'] for c in cpu):.3f}"
                parts.append(text)
        if parts:
            print(f"{workload}: " + "; ".join(parts))
    for key, name in (("latency_orm", "ORM broker"), ("latency_redis", "Redis broker")):
        found = results.get(key)
        if found and found["server_median_s"] is not None:
            verdict = "meets" if found["server_max_s"] <= LATENCY_GOAL_S else "ABOVE"
            print(
                f"submit -> in_progress, idle warm worker, {name}: median {found['server_median_s']:.3f} s, "
                f"max {found['server_max_s']:.3f} s ({verdict} the {LATENCY_GOAL_S} s goal); "
                f"client-observed median {found['client_median_s']:.3f} s"
            )
    problems = results["problems"] = []
    for key, entry in ratios.items():
        if not entry["equal_work"]:
            problems.append(f"UNEQUAL WORK in {key}: output tokens {[p['tokens'] for p in entry['pairs']]}")
    for workload in WORKLOADS:
        for run in results.get("runs", {}).get(workload, {}).get("C", []):
            if not run["output_check"]["ok"]:
                problems.append(f"OUTPUT CHECK FAILED for vllm-batch ({workload}): {run['output_check']}")
    b = results.get("run_batch")
    if b and not b["output_ok"]:
        problems.append(f"OUTPUT CHECK FAILED for run_batch: {[r['output_check'] for r in b['runs']]}")
    loads = [r["load"] for w in results.get("runs", {}).values() for rs in w.values() for r in rs if r.get("load")]
    if any(noisy(ld) for ld in loads):
        print(f"NOTE: other processes used more than {NOISY_OTHERS_PCT}% of the CPUs during some timed windows.")
    for problem in problems:
        print(f"!!! {problem}")
    text = json.dumps(results, indent=2, default=str)
    path = out / "bench.json"
    path.write_text(text)
    stamp = results["started_at"].replace(":", "").replace("-", "")[:15]
    (out / f"bench-{stamp}.json").write_text(text)
    print(f"\nwrote {path}")


QUICK = {"requests": 300, "realistic_requests": 200, "settle": 3.0, "b_runs": 1, "warmup_requests": 10}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5, help="back-to-back rounds (default 5)")
    parser.add_argument("--requests", type=int, help="synthetic requests per run (default 2000; --quick 300)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--realistic-requests", type=int, help="realistic requests per run (default 1000; 0: none)")
    parser.add_argument("--b-runs", type=int, help="run_batch runs (default 3; --quick 1)")
    parser.add_argument("--settle", type=float, help="seconds of quiet before each timed run (default 10)")
    parser.add_argument("--warmup-requests", type=int, help="size of vllm-batch's warm-up batch (default 20)")
    parser.add_argument("--latency-samples", type=int, default=5, help="submit -> in_progress samples (0: none)")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds the worker idles before each sample")
    parser.add_argument("--no-redis", dest="redis", action="store_false", help="skip the Redis-broker latency")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small files, short settles, one B run")
    parser.add_argument("--out", help="output directory (default: a new temporary directory); the model is reused")
    parser.add_argument(
        "--a-engine-args", default="{}", help="more vllm.LLM arguments for A (vLLM's defaults otherwise), JSON"
    )
    parser.add_argument(
        "--only", default="A,A',B,C", help="comma-separated subset of A, A' (LLM.chat), B (run_batch), C (vllm-batch)"
    )
    args = parser.parse_args()
    defaults = {"requests": 2000, "realistic_requests": 1000, "settle": 10.0, "b_runs": 3, "warmup_requests": 20}
    for name, value in (QUICK if args.quick else defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    parts = {p.strip().upper() for p in args.only.split(",") if p.strip()}
    if args.requests < 1 or args.max_tokens < 1 or args.pairs < 1 or args.realistic_requests < 0:
        parser.error("--requests, --max-tokens and --pairs must be at least 1")
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
    # One new file per round: no run is helped by the prefix cache of an earlier one.
    files = {
        "synthetic": [
            workloads.write_synthetic(
                out / f"synthetic_{k + 1}.jsonl", args.requests, args.max_tokens, f"s{k + 1}", k + 1
            )
            for k in range(args.pairs)
        ],
        "realistic": [
            workloads.write_realistic(out / f"realistic_{k + 1}.jsonl", args.realistic_requests, f"r{k + 1}", 100 + k)
            if args.realistic_requests
            else None
            for k in range(args.pairs)
        ],
    }
    one_file = workloads.write_synthetic(out / "one_request.jsonl", 1, args.max_tokens, "one", seed=1000)
    warm_file = workloads.write_synthetic(
        out / "warmup.jsonl", args.warmup_requests, args.max_tokens, "warm", seed=1001
    )

    results = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "pairs": args.pairs,
        "workloads": {
            "synthetic": f"{args.requests} requests x {args.max_tokens} tokens, ignore_eos, temperature 0",
            "realistic": f"{args.realistic_requests} requests, {workloads.SYSTEM_PROMPTS} shared system prompts, "
            f"max_tokens {'/'.join(str(s) for s, _ in workloads.REALISTIC_MAX_TOKENS)}, natural stops "
            "(stop strings), temperature 0",
        },
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
    started = time.monotonic()
    try:
        if parts & {"A", "A'", "C"}:
            bench_rounds(procs, parts, model, files, warm_file, one_file, args, out, logs, results)
        if "B" in parts:
            # Alone, after the others are stopped: each run starts its own engine.
            b_files = files["synthetic"][: args.b_runs]
            results["run_batch"] = bench_run_batch(procs, model, b_files, one_file, args.requests, out, logs)
    except BaseException as exc:
        failed = exc
        results["error"] = repr(exc)
        log(f"FAILED: {exc!r}")
    finally:
        procs.stop_all()
    results["wall_s"] = time.monotonic() - started
    report(results, out)
    log(f"benchmark took {results['wall_s'] / 60:.1f} min")
    if failed is not None:
        if isinstance(failed, KeyboardInterrupt):
            raise failed
        return 1
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_llm_chat":
        child_llm_chat(sys.argv[2:])
    else:
        sys.exit(main())
