"""The main job on the embedded default, end to end.

Starts the web server and the worker cluster, submits a sample batch with the
official openai SDK, waits for it, and shows the first results and the counts.
Run with `make demo`; `--keep-running` leaves the server and worker up. The
worker runs under `manage.py watchdog`, which restarts it if it dies or freezes.
Ctrl-C, SIGTERM (a `kill`, a container stop) and SIGHUP (a closed terminal) stop
everything this script started.
"""

import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402

from devtools.devstack import PROJECT_DIR, Stack, free_port  # noqa: E402

TOPICS = ["a product review", "the weather in paris", "a movie about a dog", "fast delivery", "a blue bird"]


def sample_requests(count):
    requests = []
    for i in range(count):
        body = {
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": f"Write one sentence about {TOPICS[i % len(TOPICS)]} ({i})."}],
            "max_tokens": 32,
            "temperature": 0.7,
            "seed": i,
        }
        if i % 10 == 0:
            body["guided_choice"] = ["positive", "negative", "neutral"]
            body["messages"][0]["content"] = f"Is {TOPICS[i % len(TOPICS)]} positive or negative?"
        requests.append({"custom_id": f"demo-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return requests


def _stop_on_signal(signum, frame):
    # Unwinds to main's `finally`, which stops the server and the watchdog with its cluster.
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--keep-running", action="store_true")
    args = parser.parse_args()

    port = args.port or 8000
    try:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            port = free_port()
    except OSError:
        pass

    stack = Stack(PROJECT_DIR / "var", port=port)
    try:
        print("1/5 database, tiny model and model registry ...", flush=True)
        stack.setup()
        api_key = stack.create_api_key("demo")
        print(f"2/5 web server on {stack.base_url} and worker cluster (under manage.py watchdog) ...", flush=True)
        stack.start_web()
        stack.start_watchdog()
        client = openai.OpenAI(base_url=stack.base_url, api_key=api_key, max_retries=2)
        requests = sample_requests(args.requests)
        payload = ("\n".join(json.dumps(r) for r in requests) + "\n").encode()
        print(f"3/5 uploading {len(requests)} chat requests and creating the batch (openai SDK) ...", flush=True)
        file = client.files.create(file=("demo.jsonl", payload), purpose="batch")
        batch = client.batches.create(
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"source": "make demo"},
        )
        print(f"4/5 waiting for {batch.id} (the first batch also loads the model) ...", flush=True)
        started = time.monotonic()
        last = None
        while batch.status not in ("completed", "failed", "cancelled", "expired"):
            if time.monotonic() - started > 900:
                raise SystemExit(f"batch {batch.id} did not finish in 15 minutes; logs in {stack.var_dir}")
            time.sleep(1)
            batch = client.batches.retrieve(batch.id)
            line = f"    {batch.status}: {batch.request_counts.completed}/{batch.request_counts.total} done"
            if line != last:
                print(line, flush=True)
                last = line
        elapsed = time.monotonic() - started
        print(f"5/5 batch {batch.status} in {elapsed:.1f} s", flush=True)
        print(
            f"    request_counts: total={batch.request_counts.total} completed={batch.request_counts.completed} "
            f"failed={batch.request_counts.failed}; tokens in={batch.usage.input_tokens} "
            f"out={batch.usage.output_tokens}"
        )
        if batch.status != "completed":
            print(f"    errors: {batch.errors}")
            raise SystemExit(1)
        if batch.error_file_id:
            errors = client.files.content(batch.error_file_id).text.splitlines()
            print(f"    error file {batch.error_file_id}: {len(errors)} lines; the first: {errors[0]}")
        if batch.request_counts.failed:
            raise SystemExit(f"{batch.request_counts.failed} requests failed; logs in {stack.var_dir / 'logs'}")
        lines = client.files.content(batch.output_file_id).text.splitlines()
        print(f"    output file {batch.output_file_id}: {len(lines)} lines; the first three:")
        for raw in lines[:3]:
            result = json.loads(raw)
            choice = result["response"]["body"]["choices"][0]
            print(f"    {result['custom_id']}: {choice['message']['content']!r} ({choice['finish_reason']})")
        print("    (a tiny random-weight model: the words are noise, the pipeline is real)")
        if args.keep_running:
            print(f"\nServer: {stack.base_url}  API key: {api_key}\nCtrl-C stops both.")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # A second signal must not cut the stop short and leave processes behind.
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()


if __name__ == "__main__":
    main()
