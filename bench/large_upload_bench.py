"""A large batch file: upload and validation time, peak memory of the web and the worker (issue #14).

Writes a chat batch file of --requests lines (default 50,000, the per-batch
limit), each a system prompt (one of four shared ones of 150-300 words, as
bench/workloads.py's realistic workload has them) and a user message of 3-80
words, max_tokens 16. On the dev stack (gunicorn -w 2, the django-q2 cluster,
the tiny model; the worker warmed by a small batch first, so its engine is
loaded) it then times, through the openai SDK:

  upload      client.files.create of the whole file; meanwhile the RSS of every
              gunicorn process is sampled every 50 ms from a thread: the peak of
              the worker process that took the upload and of all of them together,
              and their growth over the RSS just before;
  validation  batches.create returned -> the first poll (every 0.1 s) that is past
              `validating` (the pickup of the wake-up included), and the database's
              created_at -> in_progress_at; meanwhile the RSS of the cluster's
              processes: the process that grew most (the one that validates), the
              cluster outside vLLM's engine processes, and the cluster with them;
  cancel      the batch is then cancelled (its 50,000 generations are not the point)
              and must reach `cancelled` within --cancel-timeout.

Exits 1 when the upload's size, the batch's status or request_counts.total is not
what was sent, or a wait runs out. Every wait has a deadline. Results go to
<out>/large_upload_bench.json.

The database is the embedded default (SQLite in the stack's var dir) unless
--database-url names a PostgreSQL database, which the bench drops and creates
afresh (so name one for the bench alone); --redis-url adds Redis as broker and
cache (its database is flushed first: name one for the bench alone too).

    .venv/bin/python bench/large_upload_bench.py [--requests 50000] [--out /tmp/large-upload-bench]
        [--database-url postgresql://postgres@127.0.0.1:5432/upload_bench] [--redis-url redis://127.0.0.1:6379/6]
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import openai
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import workloads  # noqa: E402
from bench.run_batch_bench import OUR_GROUPS, LoadMeter, cpu_delta, cpu_split, is_engine_core, process_title  # noqa: E402
from bench.webhook_bench import fresh_database  # noqa: E402
from devtools.devstack import PROJECT_DIR, Stack  # noqa: E402
from devtools.tiny_model import build_tiny_model  # noqa: E402

ENV = {"Q_POLL": "0.2"}
FINISHED = {"completed", "failed", "cancelled", "expired"}
ACTIVE = {"validating", "in_progress", "finalizing", "cancelling"}
MIB = 1024 * 1024
SAMPLE_SECONDS = 0.05
LIST_SECONDS = 1.0  # how often the sampler lists the processes again (a walk of /proc)
POLL_SECONDS = 0.1
WARM_REQUESTS = 8


def write_requests(path, count, seed=0):
    """`count` chat lines: a shared system prompt and a user message each, max_tokens 16, greedy."""
    rng = random.Random(seed)
    systems = [
        f"You are assistant number {n}. Follow these instructions: {workloads.words(rng, *workloads.SYSTEM_WORDS)}"
        for n in range(workloads.SYSTEM_PROMPTS)
    ]
    with open(path, "w") as f:
        for i in range(count):
            messages = [
                {"role": "system", "content": rng.choice(systems)},
                {"role": "user", "content": f"{rng.choice(workloads.TOPICS)}: {workloads.words(rng, 3, 80)}"},
            ]
            f.write(json.dumps(workloads.request_line(f"req-{i}", messages, 16, temperature=0)) + "\n")
    return path


class RssPeaks:
    """Samples the RSS of `processes()` every SAMPLE_SECONDS on a thread of its own,
    from construction to stop(); peaks() may be read at any time in between."""

    def __init__(self, processes):
        self.processes = processes
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.known = {}  # pid -> (psutil.Process, is engine, title)
        self.listed_at = 0.0
        self.samples = 0
        self._list()
        self.before = self._sample()
        self.peak_total = self.peak_app = 0
        self.peak_by_pid = {}
        self._record(self.before)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _list(self):
        for process in self.processes():
            # Titles are read again each time: django-q2 retitles its worker processes as they work.
            known = self.known.get(process.pid)
            engine = known[1] if known else is_engine_core(process)
            self.known[process.pid] = (known[0] if known else process, engine, process_title(process))
        self.listed_at = time.monotonic()

    def _sample(self):
        found = {}
        for pid, (process, _, _) in self.known.items():
            try:
                found[pid] = process.memory_info().rss
            except psutil.Error:
                continue
        return found

    def _record(self, rss):
        with self.lock:
            self.samples += 1
            self.peak_total = max(self.peak_total, sum(rss.values()))
            self.peak_app = max(self.peak_app, sum(v for pid, v in rss.items() if not self.known[pid][1]))
            for pid, value in rss.items():
                self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0), value)

    def _run(self):
        while not self.stop_event.wait(SAMPLE_SECONDS):
            if time.monotonic() - self.listed_at >= LIST_SECONDS:
                self._list()
            self._record(self._sample())

    def peaks(self, pid=None):
        """Peaks so far, in MiB: all the processes, those outside vLLM's engine, and
        process `pid` (by default the one that grew most): its peak, growth and title."""
        with self.lock:
            before_app = sum(v for p, v in self.before.items() if not self.known[p][1])
            grown = pid or max(self.peak_by_pid, key=lambda p: self.peak_by_pid[p] - self.before.get(p, 0))
            return {
                "samples": self.samples,
                "total_before_mib": round(sum(self.before.values()) / MIB, 1),
                "total_peak_mib": round(self.peak_total / MIB, 1),
                "total_growth_mib": round((self.peak_total - sum(self.before.values())) / MIB, 1),
                "outside_engine_before_mib": round(before_app / MIB, 1),
                "outside_engine_peak_mib": round(self.peak_app / MIB, 1),
                "outside_engine_growth_mib": round((self.peak_app - before_app) / MIB, 1),
                "pid": grown,
                "process": f"{grown} {self.known[grown][2]}",
                "process_before_mib": round(self.before.get(grown, 0) / MIB, 1),
                "process_peak_mib": round(self.peak_by_pid[grown] / MIB, 1),
                "process_growth_mib": round((self.peak_by_pid[grown] - self.before.get(grown, 0)) / MIB, 1),
            }

    def stop(self, pid=None):
        self.stop_event.set()
        self.thread.join(timeout=10)
        return self.peaks(pid)


def web_processes(stack):
    try:
        main = psutil.Process(stack.web.pid)
        return [main, *main.children(recursive=True)]
    except psutil.Error:
        return []


def wait_status(client, batch_id, leave, timeout):
    """Polls every POLL_SECONDS until the batch's status is not in `leave`; returns
    the batch and the seconds it took. Raises when `timeout` runs out."""
    started = time.monotonic()
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status not in leave:
            return batch, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"batch {batch_id} still {batch.status} after {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


def database_seconds(stack, batch_id):
    """created_at -> in_progress_at and cancelling_at -> cancelled_at, from the database."""
    code = (
        "from jobs.models import Batch\n"
        f"b = Batch.objects.get(pk={batch_id!r})\n"
        "def s(a, b): return None if a is None or b is None else (b - a).total_seconds()\n"
        "print('@@', s(b.created_at, b.in_progress_at), s(b.cancelling_at, b.cancelled_at))"
    )
    line = [x for x in stack.manage("shell", "-c", code).splitlines() if x.startswith("@@")][-1]
    return [None if x == "None" else float(x) for x in line.split()[1:]]


def warm_up(client, path, timeout):
    """A small batch to completion: the worker loads its engine before anything is timed."""
    with open(path, "rb") as f:
        file = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch, seconds = wait_status(client, batch.id, ACTIVE, timeout)
    if batch.status != "completed":
        raise RuntimeError(f"warm-up batch ended {batch.status}: {batch.errors}")
    return seconds


def run(args, stack, client, requests_path, problems):
    result = {"requests": args.requests, "bytes": requests_path.stat().st_size}
    size_mib = result["bytes"] / MIB

    web_cpu = cpu_split(web_processes(stack))
    load = LoadMeter()
    web = RssPeaks(lambda: web_processes(stack))
    started = time.monotonic()
    with open(requests_path, "rb") as f:
        file = client.files.create(file=f, purpose="batch")
    upload_s = time.monotonic() - started
    result["web"] = web.stop()
    result["upload_load"] = load.stop()
    result["web_cpu_s"] = round(cpu_delta(web_cpu, cpu_split(web_processes(stack)))[0], 2)
    result["upload_s"] = round(upload_s, 3)
    result["upload_mib_per_s"] = round(size_mib / upload_s, 1)
    if file.bytes != result["bytes"]:
        problems.append(f"uploaded file has {file.bytes} bytes, sent {result['bytes']}")

    time.sleep(args.settle)
    worker_cpu = cpu_split(stack.worker_processes())
    load = LoadMeter()
    worker = RssPeaks(stack.worker_processes)
    started = time.monotonic()
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    created = time.monotonic()
    batch, _ = wait_status(client, batch.id, {"validating"}, args.validation_timeout)
    validated = time.monotonic()
    result["worker_validation"] = worker.peaks()
    result["validation_load"] = load.stop()
    outside, engine = cpu_delta(worker_cpu, cpu_split(stack.worker_processes()))
    result["worker_cpu_s"] = {"outside_engine": round(outside, 2), "engine": round(engine, 2)}
    result["create_s"] = round(created - started, 3)
    result["validation_client_s"] = round(validated - created, 3)
    result["status_after_validation"] = batch.status
    result["total_after_validation"] = batch.request_counts.total
    if batch.status != "in_progress":
        problems.append(f"batch {batch.id} left validating as {batch.status}: {batch.errors}")
    if batch.request_counts.total != args.requests:
        problems.append(f"request_counts.total is {batch.request_counts.total}, sent {args.requests}")

    if batch.status not in FINISHED:
        started = time.monotonic()
        client.batches.cancel(batch.id)
        batch, _ = wait_status(client, batch.id, ACTIVE, args.cancel_timeout)
        result["cancel_client_s"] = round(time.monotonic() - started, 3)
        if batch.status != "cancelled":
            problems.append(f"batch {batch.id} ended {batch.status} after its cancel")
    result["worker_to_cancelled"] = worker.stop(pid=result["worker_validation"]["pid"])
    result["final_status"] = batch.status
    result["final_counts"] = batch.request_counts.model_dump()
    validation_db, cancel_db = database_seconds(stack, batch.id)
    result["validation_db_s"] = validation_db
    result["cancel_db_s"] = cancel_db
    return result


def _memory(peaks, part):
    return f"peak {peaks[part + '_peak_mib']:.0f} MiB", f"+{peaks[part + '_growth_mib']:.0f} MiB"


def report(result, label):
    size_mib = result["bytes"] / MIB
    web, worker, after = result["web"], result["worker_validation"], result["worker_to_cancelled"]
    validation = result["validation_db_s"] or result["validation_client_s"]
    rate = result["requests"] / validation
    worker_cpu = result["worker_cpu_s"]["outside_engine"]
    rows = [
        ("upload (files.create)", f"{result['upload_s']:.2f} s", f"{result['upload_mib_per_s']:.1f} MiB/s"),
        ("  web: the gunicorn worker that took it", *_memory(web, "process")),
        ("  web: all gunicorn processes", *_memory(web, "total")),
        ("  web CPU during the upload", f"{result['web_cpu_s']:.2f} CPU-s", ""),
        ("validation, created_at -> in_progress_at", f"{validation:.2f} s", f"{rate:,.0f} req/s"),
        ("validation, as the client saw it (0.1 s polls)", f"{result['validation_client_s']:.2f} s", ""),
        ("  worker: the process that validated", *_memory(worker, "process")),
        ("  worker: cluster outside vLLM's engine", *_memory(worker, "outside_engine")),
        ("  worker: cluster with vLLM's engine", *_memory(worker, "total")),
        ("  worker CPU during validation, outside the engine", f"{worker_cpu:.2f} CPU-s", ""),
        ("cancel -> cancelled, as the client saw it", f"{result.get('cancel_client_s', 0):.2f} s", ""),
        ("  worker: the process that validated, created -> cancelled", *_memory(after, "process")),
        ("  worker: cluster with vLLM's engine, created -> cancelled", *_memory(after, "total")),
    ]
    print(f"\n-- {result['requests']:,} requests, {size_mib:.1f} MiB, {label} --")
    for name, value, extra in rows:
        print(f"{name:<62} {value:>16} {extra:>14}")
    print(f"the gunicorn worker: {web['process']}; the validating process: {worker['process']}")
    for window in ("upload_load", "validation_load"):
        load = result[window]
        print(
            f"{window.split('_')[0]} window: others used {load['others_pct']:.0f} % of the CPUs, "
            f"the machine {load['machine_busy_pct']:.0f} %, load average {load['loadavg'][0]}"
        )
    print(f"final: {result['final_status']}, {result['final_counts']}")


def source_version():
    """The commit the stack ran, marked when tracked files differ from it."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--database-url", default=None, help="a PostgreSQL database for the bench alone")
    parser.add_argument("--redis-url", default=None, help="Redis as broker and cache (flushed first)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of quiet before each timed window")
    parser.add_argument("--warm-timeout", type=float, default=900.0, help="engine start and the warm-up batch")
    parser.add_argument("--validation-timeout", type=float, default=600.0)
    parser.add_argument("--cancel-timeout", type=float, default=300.0)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="large-upload-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    model = out / "tiny-llama"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    requests_path = write_requests(out / f"requests-{args.requests}.jsonl", args.requests)
    warm_path = write_requests(out / "warm.jsonl", WARM_REQUESTS, seed=1)
    env = dict(ENV)
    if args.database_url:
        fresh_database(args.database_url)
        env["DATABASE_URL"] = args.database_url
    if args.redis_url:
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()
        env["REDIS_URL"] = args.redis_url
    label = "PostgreSQL" if args.database_url else "SQLite"
    label += " + Redis broker" if args.redis_url else ", ORM broker"
    problems = []
    stack = Stack(out / "var", env=env)
    try:
        stack.setup(tiny_path=model)
        key = stack.create_api_key("bench")
        stack.start_web()
        stack.start_worker()
        OUR_GROUPS.update((stack.web.pid, stack.worker.pid))  # each runs in a session of its own
        client = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=600)
        warm_s = warm_up(client, warm_path, args.warm_timeout)
        print(f"warm-up batch ({WARM_REQUESTS} requests, engine start included): {warm_s:.1f} s", flush=True)
        time.sleep(args.settle)
        result = run(args, stack, client, requests_path, problems)
    finally:
        stack.stop()
    result.update(
        database=label,
        commit=source_version(),
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        command=" ".join(sys.argv),
        problems=problems,
    )
    (out / "large_upload_bench.json").write_text(json.dumps(result, indent=1))
    report(result, label)
    print(f"app at {result['commit']}, {result['date']}")
    print(f"\nwritten to {out / 'large_upload_bench.json'}")
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
