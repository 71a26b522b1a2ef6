"""The web API under load while a batch runs, on the production path (PostgreSQL + Redis).

Starts a dev stack on a fresh database of the PostgreSQL server in DATABASE_URL
(created here, dropped at the end) and the Redis broker, with the tiny model. For
each variant it (re)starts gunicorn (`-w 4 --threads 16`, deploy/gunicorn.conf.py),
submits a batch of --requests chat requests, and while it runs lets --clients
clients (10 owners, one API key each, every client on its own keep-alive
connection) poll their batch, list files and batches and upload small files for
--seconds. Prints requests, errors (connection errors and any status >= 400),
p50 / p95 / p99 per variant, and writes them to <out>/load_bench.json.

Variants (--variants, comma-separated), all on the same stack and worker:
  before     the web as it ran when 3 connection errors were seen: gunicorn's default
             keep-alive (2 s) and a new database connection per request
  keepalive  deploy/gunicorn.conf.py (keep-alive 75 s), still a connection per request
  after      the defaults now: the conf file, and each web thread keeps its database
             connection (DATABASE_CONN_MAX_AGE, 600 s on PostgreSQL, health-checked)

    .venv/bin/python bench/load_bench.py --database-url postgresql://postgres@127.0.0.1:5432/postgres \\
        [--variants before,keepalive,after] [--clients 50] [--seconds 60] [--requests 2000]
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.devstack import Stack  # noqa: E402
from devtools.tiny_model import build_tiny_model  # noqa: E402

OWNERS = 10
FINISHED = {"completed", "failed", "cancelled", "expired"}
VARIANTS = {
    "before": {"args": ("--keep-alive", "2"), "env": {"DATABASE_CONN_MAX_AGE": "0"}},
    "keepalive": {"args": (), "env": {"DATABASE_CONN_MAX_AGE": "0"}},
    "after": {"args": (), "env": {}},
}


def chat_line(custom_id, max_tokens):
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": f"load {custom_id}"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def jsonl(count, max_tokens, prefix):
    return ("\n".join(chat_line(f"{prefix}-{i}", max_tokens) for i in range(count)) + "\n").encode()


def create_keys(stack, count, prefix="load"):
    """`count` API keys, each of its own owner, made in one manage.py process."""
    code = (
        "from django.contrib.auth import get_user_model\n"
        "from jobs.services import api_key_create\n"
        f"for i in range({count}):\n"
        f"    owner, _ = get_user_model().objects.get_or_create(username=f'{prefix}-{{i}}')\n"
        f"    print('key', api_key_create(owner=owner, name=f'{prefix}-{{i}}')[1])\n"
    )
    output = stack.manage("shell", "-c", code)
    return [line.split()[1] for line in output.splitlines() if line.startswith("key ")]


def submit_batches(base_url, keys, requests):
    """The first owner's batch of `requests` runs during the load; every other owner has a one-line batch."""
    batch_ids = []
    for index, key in enumerate(keys):
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            count = requests if index == 0 else 1
            content = jsonl(count, 64 if index == 0 else 4, f"owner{index}")
            upload = http.post("/files", files={"file": ("load.jsonl", content)}, data={"purpose": "batch"})
            upload.raise_for_status()
            body = {
                "input_file_id": upload.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }
            batch = http.post("/batches", json=body)
            batch.raise_for_status()
            batch_ids.append(batch.json()["id"])
    return batch_ids


def batch_state(base_url, key, batch_id):
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        return http.get(f"/batches/{batch_id}").json()


def wait_running(base_url, key, batch_id, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = batch_state(base_url, key, batch_id)
        if batch["status"] == "in_progress" and batch["request_counts"]["completed"] > 0 or batch["status"] in FINISHED:
            return batch
        time.sleep(0.5)
    raise RuntimeError(f"batch {batch_id} did not start within {timeout} s")


def cancel_all(base_url, keys, batch_ids, timeout=300):
    for key, batch_id in zip(keys, batch_ids, strict=True):
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            if http.get(f"/batches/{batch_id}").json()["status"] not in FINISHED:
                http.post(f"/batches/{batch_id}/cancel")
    deadline = time.monotonic() + timeout
    for key, batch_id in zip(keys, batch_ids, strict=True):
        while batch_state(base_url, key, batch_id)["status"] not in FINISHED:
            if time.monotonic() > deadline:
                raise RuntimeError(f"batch {batch_id} not finished {timeout} s after its cancel")
            time.sleep(0.5)


def _client(base_url, key, batch_id, deadline, rng, latencies, errors, counts, lock):
    """One API client: its own keep-alive connection, a random pause of 0.1-2.5 s between
    requests (the SDK's poll interval is 1-2 s), so idle gaps cross any short keep-alive."""
    upload = jsonl(2, 4, "upload")
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        while time.monotonic() < deadline:
            kind = rng.choices(["retrieve", "list_files", "list_batches", "upload"], weights=[6, 1.5, 1.5, 1])[0]
            started = time.monotonic()
            try:
                if kind == "retrieve":
                    response = http.get(f"/batches/{batch_id}")
                elif kind == "list_files":
                    response = http.get("/files", params={"limit": 20})
                elif kind == "list_batches":
                    response = http.get("/batches", params={"limit": 20})
                else:
                    response = http.post("/files", files={"file": ("small.jsonl", upload)}, data={"purpose": "batch"})
                error = (
                    None if response.status_code < 400 else f"{kind}: HTTP {response.status_code} {response.text[:200]}"
                )
            except httpx.HTTPError as exc:
                error = f"{kind}: {type(exc).__name__}: {exc}"
            elapsed = time.monotonic() - started
            with lock:
                counts[kind] += 1
                latencies.append(elapsed)
                if error:
                    errors.append(error)
            time.sleep(rng.uniform(0.1, 2.5))


def run_load(base_url, keys, batch_ids, *, clients=50, seconds=60.0, seed=0):
    """`clients` clients spread over the owners, each polling its owner's batch, listing and
    uploading until `seconds` have passed. Returns counts, errors and latency percentiles."""
    latencies, errors, lock = [], [], threading.Lock()
    counts = {"retrieve": 0, "list_files": 0, "list_batches": 0, "upload": 0}
    deadline = time.monotonic() + seconds
    threads = []
    for i in range(clients):
        owner = i % len(keys)
        args = (
            base_url,
            keys[owner],
            batch_ids[owner],
            deadline,
            random.Random(seed + i),
            latencies,
            errors,
            counts,
            lock,
        )
        threads.append(threading.Thread(target=_client, args=args, daemon=True))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    wall = time.monotonic() - started
    ms = sorted(t * 1000 for t in latencies)
    centiles = statistics.quantiles(ms, n=100) if len(ms) > 1 else ms * 99
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(ms),
        "requests_per_second": round(len(ms) / wall, 1),
        "by_kind": counts,
        "errors": len(errors),
        "error_samples": errors[:10],
        "p50_ms": round(centiles[49], 1),
        "p95_ms": round(centiles[94], 1),
        "p99_ms": round(centiles[98], 1),
        "max_ms": round(ms[-1], 1) if ms else None,
    }


def _database_url(server_url, name):
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""), help="a PostgreSQL server")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    parser.add_argument("--variants", default="before,keepalive,after")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.database_url.startswith("postgres"):
        parser.error("--database-url (or DATABASE_URL) must name a PostgreSQL server")
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {sorted(unknown)}")

    import psycopg
    import redis

    out = args.out or Path(tempfile.mkdtemp(prefix="load-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "tiny-llama"
    if not (model_path / "config.json").exists():
        build_tiny_model(model_path)
    name = f"vllm_batch_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    redis.Redis.from_url(args.redis_url).flushdb()
    stack = Stack(
        out / f"var-{name}",
        env={
            "DATABASE_URL": _database_url(args.database_url, name),
            "REDIS_URL": args.redis_url,
            "Q_CLUSTER_NAME": name,
            "VLLM_BATCH_CPU_KVCACHE_GIB": "1",
        },
    )
    results = {}
    try:
        stack.setup(tiny_path=model_path)
        keys = create_keys(stack, OWNERS)
        stack.start_worker()
        for variant in variants:
            stack.env.pop("DATABASE_CONN_MAX_AGE", None)
            stack.env.update(VARIANTS[variant]["env"])
            stack.start_web(workers=4, threads=16, args=VARIANTS[variant]["args"])
            try:
                batch_ids = submit_batches(stack.base_url, keys, args.requests)
                wait_running(stack.base_url, keys[0], batch_ids[0])
                result = run_load(stack.base_url, keys, batch_ids, clients=args.clients, seconds=args.seconds)
                batch = batch_state(stack.base_url, keys[0], batch_ids[0])
                result["batch_status_after"] = batch["status"]
                result["batch_completed_after"] = batch["request_counts"]["completed"]
                cancel_all(stack.base_url, keys, batch_ids)
            finally:
                _stop_web(stack)
            results[variant] = result
            print(f"{variant:>10}: {json.dumps(result)}", flush=True)
    finally:
        stack.stop()
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    (out / "load_bench.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'variant':>10} {'requests':>8} {'req/s':>6} {'errors':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}")
    for variant, r in results.items():
        print(
            f"{variant:>10} {r['requests']:>8} {r['requests_per_second']:>6} {r['errors']:>6} "
            f"{r['p50_ms']:>7} {r['p95_ms']:>7} {r['p99_ms']:>7}"
        )
    print(f"\nwritten to {out / 'load_bench.json'}")


def _stop_web(stack):
    from devtools.devstack import stop_process_tree

    stop_process_tree(stack.web, timeout=30)
    stack.web = None


if __name__ == "__main__":
    main()
