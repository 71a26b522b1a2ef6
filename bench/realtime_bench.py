"""Realtime latency benchmark on the embedded tiny model.

Times, for the same chat request (max_tokens 16, temperature 0):
  direct  vllm.LLM.chat() on a warm engine in a subprocess (p50)
  idle    POST /v1/chat/completions through gunicorn to a warm, idle worker (p50)
  busy    the same, one call after the other, while a 2000-request batch (64 tokens
          each) runs on that worker (p50, p95)
and the batch's throughput with and without those calls, and prints the ratios.
Batches with and without calls alternate (--repeat times each); every batch has
prompts of its own, so none is helped by the prefix cache of an earlier one.

    .venv/bin/python bench/realtime_bench.py [--requests 2000] [--calls 40] [--repeat 3] [--out /tmp/rt-bench]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.devstack import Stack  # noqa: E402
from devtools.tiny_model import build_tiny_model  # noqa: E402

MESSAGES = [{"role": "user", "content": "Tell me a story."}]
ENV = {"VLLM_BATCH_HEARTBEAT_SECONDS": "2", "Q_POLL": "0.2"}

DIRECT = """
import json, sys, time
from vllm import LLM, SamplingParams
def main():
    llm = LLM(model=sys.argv[1], gpu_memory_utilization=0.3, max_model_len=2048)
    params = SamplingParams(max_tokens=16, temperature=0)
    messages = json.loads(sys.argv[2])
    llm.chat(messages, params, use_tqdm=False)
    times = []
    for _ in range(int(sys.argv[3])):
        started = time.monotonic()
        llm.chat(messages, params, use_tqdm=False)
        times.append(time.monotonic() - started)
    print("TIMES", json.dumps(times))
if __name__ == "__main__":
    main()
"""


def p(values, q):
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def call(client):
    started = time.monotonic()
    client.chat.completions.create(model="tiny-llama", messages=MESSAGES, max_tokens=16, temperature=0)
    return time.monotonic() - started


def run_batch(client, n, with_calls=False, tag="warm"):
    """Seconds from submit to completed, and the realtime call times measured while
    the batch was in progress (calls one after the other, once 32 requests are done)."""
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "tiny-llama",
                "messages": [{"role": "user", "content": f"{tag}: story {i}"}],
                "max_tokens": 64,
                "ignore_eos": True,
            },
        }
        for i in range(n)
    ]
    file = client.files.create(file=("in.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch")
    started = time.monotonic()
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    times = []
    while True:
        current = client.batches.retrieve(batch.id)
        if current.status in ("completed", "failed", "cancelled", "expired"):
            return time.monotonic() - started, times
        if with_calls and current.status == "in_progress" and current.request_counts.completed >= 32:
            times.append(call(client))
        else:
            time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="rt-bench-"))
    model = out / "tiny-llama"
    if not (model / "config.json").exists():
        build_tiny_model(model)

    direct = subprocess.run(
        [sys.executable, "-c", DIRECT, str(model), json.dumps(MESSAGES), str(args.calls)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"},
    )
    direct_times = json.loads(next(x for x in direct.stdout.splitlines() if x.startswith("TIMES"))[6:])

    stack = Stack(out / "var", env=ENV)
    stack.setup(tiny_path=model)
    key = stack.create_api_key("bench")
    stack.start_web()
    stack.start_worker()
    try:
        client = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=120)
        run_batch(client, 20)
        while True:
            try:
                call(client)
                break
            except openai.InternalServerError:
                time.sleep(0.5)
        idle = [call(client) for _ in range(args.calls)]
        alone, shared, busy = [], [], []
        for k in range(args.repeat):
            order = (False, True) if k % 2 == 0 else (True, False)
            for with_calls in order:
                seconds, times = run_batch(client, args.requests, with_calls, tag=f"run {k} {with_calls}")
                (shared if with_calls else alone).append(args.requests / seconds)
                busy += times
    finally:
        stack.stop()

    report = {
        "direct_p50_ms": 1000 * statistics.median(direct_times),
        "idle_p50_ms": 1000 * statistics.median(idle),
        "busy_p50_ms": 1000 * statistics.median(busy),
        "busy_p95_ms": 1000 * p(busy, 95),
        "busy_calls": len(busy),
        "batch_rps_alone": statistics.median(alone),
        "batch_rps_with_realtime": statistics.median(shared),
    }
    report["idle_target_ms"] = 1.2 * report["direct_p50_ms"] + 50
    report["idle_over_direct"] = report["idle_p50_ms"] / report["direct_p50_ms"]
    report["batch_throughput_drop"] = 1 - report["batch_rps_with_realtime"] / report["batch_rps_alone"]
    (out / "realtime_bench.json").write_text(json.dumps({**report, "alone": alone, "with_realtime": shared}, indent=2))
    for name, value in report.items():
        print(f"{name:28s} {value:10.3f}")
    print("batch req/s alone         ", " ".join(f"{x:.1f}" for x in alone))
    print("batch req/s with realtime ", " ".join(f"{x:.1f}" for x in shared))


if __name__ == "__main__":
    main()
