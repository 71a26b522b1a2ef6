"""Label Studio webhook receiver latency, idle and while a batch runs.

Posts recorded Label Studio deliveries (labeling/tests/fixtures) to
POST /v1/webhooks/label-studio on the dev stack (gunicorn + the cluster + the
tiny model, default chunk size) one after the other: first with the worker idle,
then while a batch of --requests chat requests runs on it. Prints p50 / p99 / max
of the answer time for both, checks every delivery was answered 200, and that
every stored event was applied (status processed) within --apply-timeout seconds.

The database is the embedded default (SQLite in the stack's var dir) unless
--database-url names a PostgreSQL database, which the bench drops and creates
afresh (so name one for the bench alone); --redis-url adds Redis as the broker
and cache, as a production install has them.

    .venv/bin/python bench/webhook_bench.py [--deliveries 200] [--requests 3000] [--out /tmp/webhook-bench]
        [--database-url postgresql://postgres@127.0.0.1:5432/webhook_bench] [--redis-url redis://127.0.0.1:6379/5]
"""

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.devstack import Stack  # noqa: E402
from devtools.tiny_model import build_tiny_model  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "labeling" / "tests" / "fixtures"
SECRET = "bench-secret"
ENV = {"LABEL_STUDIO_WEBHOOK_SECRETS": SECRET, "Q_POLL": "0.2"}
FINISHED = {"completed", "failed", "cancelled", "expired"}


def deliveries(count):
    """ANNOTATION_UPDATED bodies of one recorded delivery, each a newer update of its own annotation."""
    recorded = json.loads((FIXTURES / "webhook_ANNOTATION_UPDATED.json").read_text())["request"]["body"]
    bodies = []
    for i in range(count):
        body = copy.deepcopy(recorded)
        body["annotation"]["id"] = 100_000 + i
        body["annotation"]["updated_at"] = f"2026-11-30T10:{i // 60 % 60:02d}:{i % 60:02d}.000000Z"
        bodies.append(json.dumps(body).encode())
    return bodies


def post_all(http, url, bodies):
    times = []
    for body in bodies:
        started = time.monotonic()
        response = http.post(url, content=body, headers={"X-Webhook-Secret": SECRET})
        times.append(time.monotonic() - started)
        assert response.status_code == 200, response.text
    return times


def summary(times):
    ms = sorted(t * 1000 for t in times)
    p99 = statistics.quantiles(ms, n=100)[98] if len(ms) > 1 else ms[0]
    return f"p50 {statistics.median(ms):6.1f} ms   p99 {p99:6.1f} ms   max {ms[-1]:6.1f} ms   (n={len(ms)})"


def fresh_database(url):
    """Drops and creates the PostgreSQL database the URL names."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    assert name and name not in ("postgres", "template0", "template1"), f"name a database for the bench: {url}"
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def wait_applied(stack, expected, timeout):
    code = (
        "from labeling.models import WebhookEvent\n"
        "print(WebhookEvent.objects.filter(status='processed').count(), WebhookEvent.objects.count())"
    )
    deadline = time.monotonic() + timeout
    while True:
        processed, total = map(int, stack.manage("shell", "-c", code).split()[-2:])
        if processed >= expected or time.monotonic() > deadline:
            return processed, total
        time.sleep(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=200)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--apply-timeout", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--database-url", default=None, help="a PostgreSQL database for the bench alone")
    parser.add_argument("--redis-url", default=None, help="Redis as broker and cache")
    parser.add_argument("--worker-nice", type=int, default=0, help="start the cluster at this CPU niceness")
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="this process's CPU niceness once the stack runs (negative needs root): separates its own waits",
    )
    parser.add_argument(
        "--engine-cpu-policy", choices=("idle", "normal"), default="idle", help="VLLM_BATCH_ENGINE_CPU_POLICY"
    )
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    model = out / "tiny-llama"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    env = {**ENV, "VLLM_BATCH_ENGINE_CPU_POLICY": args.engine_cpu_policy}
    if args.database_url:
        fresh_database(args.database_url)
        env["DATABASE_URL"] = args.database_url
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    database = "PostgreSQL" if args.database_url else "SQLite"
    stack = Stack(out / "var", env=env)
    try:
        stack.setup(tiny_path=model)
        key = stack.create_api_key("bench")
        stack.start_web()
        stack.start_worker(nice=args.worker_nice)
        if args.client_nice:
            os.setpriority(os.PRIO_PROCESS, 0, args.client_nice)
        client = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=60)
        url = f"{stack.base_url}/webhooks/label-studio"
        bodies = deliveries(2 * args.deliveries)
        with httpx.Client(timeout=10) as http:
            post_all(http, url, bodies[:10])  # warm the web processes
            idle = post_all(http, url, bodies[10 : args.deliveries])
            lines = "".join(
                json.dumps(
                    {
                        "custom_id": f"r{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {
                            "model": "tiny-llama",
                            "messages": [{"role": "user", "content": f"Tell me about {i}."}],
                            "max_tokens": 64,
                            "ignore_eos": True,
                        },
                    }
                )
                + "\n"
                for i in range(args.requests)
            )
            file = client.files.create(file=("bench.jsonl", lines.encode()), purpose="batch")
            batch = client.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            deadline = time.monotonic() + 600
            while client.batches.retrieve(batch.id).request_counts.completed < 50:
                assert time.monotonic() < deadline, "the batch did not start"
                time.sleep(0.5)
            busy = post_all(http, url, bodies[args.deliveries :])
            state = client.batches.retrieve(batch.id)
            running = state.status == "in_progress"
        processed, total = wait_applied(stack, len(bodies), args.apply_timeout)
        print(f"database:         {database}{' + Redis broker' if args.redis_url else ''}")
        print(
            f"cluster nice:     {args.worker_nice}, engine CPU policy {args.engine_cpu_policy}, "
            f"client nice {args.client_nice}"
        )
        print(f"idle worker:      {summary(idle)}")
        print(f"batch running:    {summary(busy)}   (batch still in progress at the end: {running})")
        print(f"events applied:   {processed} of {total} stored")
        if processed != total or total != len(bodies):
            sys.exit(1)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
