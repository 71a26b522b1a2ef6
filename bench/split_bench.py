"""One batch on one worker cluster vs split across two (VLLM_BATCH_SPLIT_REQUESTS),
on the production path: PostgreSQL + Redis, worker clusters as separate processes
sharing the files, as worker nodes do.

For each round and each setup it starts the setup's clusters (each warm: holding
the model before the batch comes), submits one batch of --requests chat
requests, and times it from `in_progress_at` to `completed_at` (the database's
timestamps). Setups:
  one        one cluster, the batch not split (the default)
  one-split  one cluster, the batch split into ranges of --range requests: the
             cost of splitting alone
  two-split  two clusters, split: on one GPU node each this is what a second node
             gives; on a machine whose cores both clusters share it is the
             overhead of two engines on the same cores, not a speed-up (vLLM's
             CPU backend binds each engine's compute threads to the same cores
             by itself, keeping one core for its scheduler)
  two-split-own-cores  the same with each engine bound to a core of its own
             (VLLM_CPU_OMP_THREADS_BIND=0 and 1): the closest this machine comes
             to two nodes; the processes around the engines share what is left
Default: the first three.
Checks that every run completed every request once with the same output tokens
(the same work), and prints each run and the ratios to `one` per round.

    .venv/bin/python bench/split_bench.py [--requests 6000] [--range 1000] [--rounds 2] \\
        [--database-url postgresql://postgres@127.0.0.1:5432/split_bench] [--redis-url redis://127.0.0.1:6379/7]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.webhook_bench import fresh_database  # noqa: E402
from devtools.devstack import Stack  # noqa: E402
from devtools.tiny_model import build_tiny_model  # noqa: E402

# name: (clusters, split, VLLM_CPU_OMP_THREADS_BIND per cluster or None: vLLM's "auto")
SETUPS = {
    "one": (1, False, None),
    "one-split": (1, True, None),
    "two-split": (2, True, None),
    "two-split-own-cores": (2, True, ("0", "1")),
}
ENV = {"Q_POLL": "0.2", "VLLM_BATCH_HEARTBEAT_SECONDS": "2", "VLLM_BATCH_STALE_BATCH_SECONDS": "60"}


def batch_file(count, max_tokens, tag):
    lines = []
    for i in range(count):
        body = {
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": f"Request {tag}-{i}: tell me about the number {i}."}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        lines.append(
            json.dumps({"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        )
    return ("\n".join(lines) + "\n").encode()


def run_one(client, database_url, count, max_tokens, tag):
    file = client.files.create(file=("split.jsonl", batch_file(count, max_tokens, tag)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 3600
    while (state := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "cancelled", "expired"):
        if time.monotonic() > deadline:
            raise SystemExit(f"batch {batch.id} did not finish within an hour")
        time.sleep(1)
    with psycopg.connect(database_url) as conn:
        started, ended = conn.execute(
            "SELECT in_progress_at, completed_at FROM jobs_batch WHERE id = %s", (batch.id,)
        ).fetchone()
        holders = [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT done_by FROM jobs_batchrange WHERE batch_id = %s", (batch.id,)
            ).fetchall()
        ]
    ids = [json.loads(line)["custom_id"] for line in client.files.content(state.output_file_id).text.splitlines()]
    ok = (
        state.status == "completed"
        and state.request_counts.completed == count
        and ids == [f"{tag}-{i}" for i in range(count)]
    )
    return {
        "seconds": (ended - started).total_seconds(),
        "output_tokens": state.usage.output_tokens,
        "ok": ok,
        "nodes": len(holders),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--range", type=int, default=1000, help="VLLM_BATCH_SPLIT_REQUESTS of the split setups")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--setups", default="one,one-split,two-split")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/split_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="split-bench-"))
    model = out / "tiny-llama"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    fresh_database(args.database_url)
    env = {**ENV, "DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url, "Q_CLUSTER_NAME": "split-bench"}
    web = Stack(out / "var", env=env)
    runs = []
    try:
        web.setup(tiny_path=model)
        key = web.create_api_key("bench")
        web.start_web()
        client = openai.OpenAI(base_url=web.base_url, api_key=key, max_retries=0, timeout=120)
        for round_ in range(args.rounds):
            for name in args.setups.split(","):
                clusters, split, binds = SETUPS[name]
                node_env = {**env, "VLLM_BATCH_SPLIT_REQUESTS": str(args.range if split else 0)}
                nodes = [
                    Stack(
                        out / "var",
                        env={**node_env, **({"VLLM_CPU_OMP_THREADS_BIND": binds[i]} if binds else {})},
                        log_prefix=f"{name}-{round_}-{i}-",
                    )
                    for i in range(clusters)
                ]
                try:
                    for node in nodes:
                        node.start_worker()
                    web.warm(client, workers=clusters)
                    result = run_one(client, args.database_url, args.requests, args.max_tokens, f"{name}{round_}")
                finally:
                    for node in nodes:
                        node.stop_worker()
                result.update(setup=name, round=round_)
                runs.append(result)
                print(
                    f"round {round_} {name:10s} {result['seconds']:7.1f} s"
                    f"  {args.requests / result['seconds']:7.1f} req/s"
                    f"  output tokens {result['output_tokens']}  ranges run by {result['nodes']} node(s)"
                    f"  {'ok' if result['ok'] else 'NOT OK'}",
                    flush=True,
                )
    finally:
        web.stop()
    print(f"\n{args.requests} requests x {args.max_tokens} tokens, ranges of {args.range}; ratios to `one` per round:")
    for name in args.setups.split(","):
        ratios = []
        for round_ in range(args.rounds):
            base = next(r for r in runs if r["round"] == round_ and r["setup"] == "one")
            mine = next(r for r in runs if r["round"] == round_ and r["setup"] == name)
            ratios.append(base["seconds"] / mine["seconds"])
        print(
            f"  {name:10s} throughput x {', '.join(f'{r:.3f}' for r in ratios)}"
            f"  (median {statistics.median(ratios):.3f})"
        )
    (out / "split_bench.json").write_text(json.dumps(runs, indent=1))
    same_work = len({r["output_tokens"] for r in runs}) == 1
    complete = all(r["ok"] for r in runs)
    print(f"same work in every run (output tokens): {same_work}; every run complete and in order: {complete}")
    if not same_work or not complete:
        sys.exit(1)


if __name__ == "__main__":
    main()
