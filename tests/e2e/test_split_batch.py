"""One batch split across two worker nodes (VLLM_BATCH_SPLIT_REQUESTS, jobs.ranges)
on one PostgreSQL and one Redis: each range run once, the output in input order,
and a helper killed mid-range has its range taken over by the batch's holder."""

import time

import openai
import pytest

from devtools.devstack import Stack

from .conftest import assert_exactly_once, production_env, query, requests_for, submit, wait_finished

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

REDIS_DB = 9
RANGE = 400


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_model_path):
    with production_env("vllm_batch_split", REDIS_DB) as env:
        var_dir = tmp_path_factory.mktemp("e2e-split")
        env = {**env, "VLLM_BATCH_SPLIT_REQUESTS": str(RANGE)}
        x = Stack(var_dir, env=env, log_prefix="node-x-")
        y = Stack(var_dir, env=env, log_prefix="node-y-")
        try:
            x.setup(tiny_path=tiny_model_path)
            x.api_key = x.create_api_key("split")
            x.start_web(workers=2, threads=8)
            x.start_worker()
            y.start_worker()
            client = openai.OpenAI(base_url=x.base_url, api_key=x.api_key, max_retries=0, timeout=60)
            x.warm(client, workers=2)
            yield x, y, client
        finally:
            for stack in (y, x):
                stack.stop()


def ranges_of(env, batch_id):
    """(first line, holder, done by) of the batch's ranges, in line order."""
    return query(
        env,
        "SELECT first_line, claimed_by, done_by FROM jobs_batchrange WHERE batch_id = %s ORDER BY first_line",
        batch_id,
    )


def node_of(holder, nodes):
    pid = int(holder.rsplit(":", 1)[1])
    return next(node for node in nodes if pid in {p.pid for p in node.worker_processes()})


@pytest.mark.timeout(1800)
def test_one_batch_split_across_two_nodes_runs_each_range_once_in_input_order(pair):
    x, y, client = pair
    requests = requests_for("tiny-llama", "split", 10 * RANGE, max_tokens=16)

    batch = wait_finished(client, submit(client, requests).id, timeout=900)

    assert_exactly_once(client, batch, requests)
    rows = ranges_of(x.env, batch.id)
    assert [first for first, _, _ in rows] == [1 + RANGE * i for i in range(10)]
    assert all(done_by and not holder for _, holder, done_by in rows)
    # Both nodes ran ranges of it.
    assert {node_of(done_by, (x, y)) for _, _, done_by in rows} == {x, y}
    (total,) = query(x.env, "SELECT count(*) FROM jobs_batchresult WHERE batch_id = %s", batch.id)[0]
    assert total == 0  # the results are in the output file now


@pytest.mark.timeout(1800)
def test_kill_9_of_a_helper_mid_range_its_range_is_taken_over_exactly_once(pair):
    x, y, client = pair
    requests = requests_for("tiny-llama", "killed", 10 * RANGE, max_tokens=16)
    batch = submit(client, requests)
    deadline = time.monotonic() + 600
    while True:
        (held,) = query(x.env, "SELECT claimed_by FROM jobs_batch WHERE id = %s", batch.id)[0]
        helping = {holder for _, holder, _ in ranges_of(x.env, batch.id) if holder and holder != held}
        if held and helping:
            break
        assert time.monotonic() < deadline, "no node helped with the batch"
        time.sleep(0.1)
    helper_name = helping.pop()
    helper = node_of(helper_name, (x, y))
    # What it holds as it dies (the kill itself may outlast the stale limit: it waits for every process).
    taken_over = [first for first, holder, _ in ranges_of(x.env, batch.id) if holder == helper_name]
    helper.kill_worker()

    # The holder runs its ranges, then takes the dead helper's over once stale (20 s here).
    finished = wait_finished(client, batch.id, timeout=900)

    assert_exactly_once(client, finished, requests)
    done_by = dict((first, done) for first, _, done in ranges_of(x.env, batch.id))
    assert taken_over and {done_by[first] for first in taken_over} == {held}
