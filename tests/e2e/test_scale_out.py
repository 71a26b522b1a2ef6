"""Scale-out on the production path: worker clusters as separate processes (nodes)
on one PostgreSQL and one Redis, sharing the var directory as nodes share storage.

Node A may load tiny-llama, node B tiny-llama-b (the same weights registered
under a second name: two models as far as the product can tell). Each node's own
log says which batches it ran, in order."""

import re

import openai
import pytest

from devtools.devstack import Stack

from .conftest import assert_exactly_once, production_env, query, requests_for, submit, wait_finished, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

REDIS_DB = 8
RAN = re.compile(r"workers\.tasks: batch (batch_\w+) \(woken by batch_\w+\): (\w[\w ]*)$")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, tiny_model_path):
    with production_env("vllm_batch_scale", REDIS_DB) as env:
        var_dir = tmp_path_factory.mktemp("e2e-scale-out")
        a = Stack(var_dir, env={**env, "VLLM_BATCH_NODE_MODELS": "tiny-llama"}, log_prefix="node-a-")
        b = Stack(var_dir, env={**env, "VLLM_BATCH_NODE_MODELS": "tiny-llama-b"}, log_prefix="node-b-")
        c = Stack(var_dir, env=env, log_prefix="node-c-")
        try:
            a.setup(tiny_path=tiny_model_path)
            a.manage("register_model", "tiny-llama-b", str(tiny_model_path), "--max-model-len", "2048")
            a.api_key = a.create_api_key("scale-out")
            a.start_web(workers=2, threads=8)
            yield a, b, c
        finally:
            for stack in (c, b, a):
                stack.stop()


def ran(node):
    """(batch id, outcome) for each batch the node's cluster ran, in order."""
    text = (node.var_dir / f"{node.log_prefix}worker.log").read_text(errors="replace")
    return [match.groups() for match in map(RAN.search, text.splitlines()) if match]


MODELS = ("tiny-llama", "tiny-llama-b")


def model_swaps(node):
    return dict(query(node.env, "SELECT name, model_swaps FROM workers_worker"))


@pytest.mark.timeout(1800)
def test_twenty_batches_over_two_nodes_by_model_and_priority_each_request_once(nodes):
    a, b, _ = nodes
    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=60)
    # Queued before any node runs: each node then takes them in its own order.
    queued = {}  # batch id -> (model, priority, requests), in the order created
    for i in range(20):
        model, priority = MODELS[i % 2], 1 if i >= 16 else 0
        requests = requests_for(model, f"q{i}", 20)
        batch = submit(client, requests, metadata={"priority": str(priority)})
        queued[batch.id] = (model, priority, requests)
    a.start_worker()
    b.start_worker()

    for batch_id, (_, _, requests) in queued.items():
        assert_exactly_once(client, wait_finished(client, batch_id, timeout=900), requests)
    for node, model in ((a, "tiny-llama"), (b, "tiny-llama-b")):
        done = [batch_id for batch_id, outcome in ran(node) if outcome == "completed"]
        # Its model only; high priority first, then in the order created (the sort is stable).
        by_priority = sorted(queued.items(), key=lambda item: -item[1][1])
        assert done == [i for i, (m, _, _) in by_priority if m == model], node.log_prefix
    # Labels kept each model on its node: no engine was swapped.
    assert set(model_swaps(a).values()) == {0}


@pytest.mark.timeout(1800)
def test_kill_9_of_a_node_mid_batch_another_node_finishes_it_exactly_once(nodes):
    a, b, c = nodes
    for node in (a, b):
        if node.worker is None:  # run alone
            node.start_worker()
    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=60)
    requests = requests_for("tiny-llama-b", "kill", 2000, max_tokens=32)
    batch = submit(client, requests)
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 32, timeout=900, interval=0.1)
    # A node that may load any model joins, idle; node B dies (power cut, OOM killer).
    c.start_worker()
    b.kill_worker()
    done_at_kill = client.batches.retrieve(batch.id).request_counts.completed
    assert done_at_kill < len(requests), "the batch ended before the kill; make it longer"

    # Node A may not load tiny-llama-b; node C takes the lease over once it is stale.
    finished = wait_finished(client, batch.id, timeout=900)
    assert_exactly_once(client, finished, requests)
    assert (batch.id, "completed") in ran(c)
    assert batch.id not in {batch_id for batch_id, _ in ran(a)}
