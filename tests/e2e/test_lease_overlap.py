"""Two workers overlapping on one batch: the session stack's worker is frozen
(SIGSTOP of its whole tree, engine included) mid-batch past the stale limit, a
second cluster on the same database takes the batch over, then the first is
resumed (SIGCONT) with a chunk in flight. The first must save nothing more, and
the batch ends with request_counts and usage equal to the sums over its files,
each custom_id exactly once."""

import signal
import sqlite3
import time
from pathlib import Path

import psutil
import pytest

from devtools.devstack import Stack
from tests.conftest import E2E_ENV

from .conftest import chat_request, read_lines, submit, wait_finished, wait_for

pytestmark = pytest.mark.e2e

N = 600
STALE = int(E2E_ENV["VLLM_BATCH_STALE_BATCH_SECONDS"])


def lease(db, batch_id):
    """(holder, seconds since its heartbeat on the database's clock, completed requests)."""
    return db.execute(
        "SELECT claimed_by, (julianday('now') - julianday(heartbeat_at)) * 86400, completed_requests"
        " FROM jobs_batch WHERE id = ?",
        (batch_id,),
    ).fetchone()


def wait_lease(db, batch_id, predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = lease(db, batch_id)
        if predicate(*row):
            return row
        time.sleep(0.2)
    raise AssertionError(f"{what}: still {lease(db, batch_id)} after {timeout} s")


def signal_all(processes, sig):
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def log_lines(var_dir, text):
    return [
        line
        for path in [*Path(var_dir).glob("*.log"), *Path(var_dir).glob("logs/*.log*")]
        for line in path.read_text(errors="replace").splitlines()
        if text in line
    ]


# Two model loads when run alone (the session stack's and the second cluster's): on a
# busy 2-core machine each took up to 340 s, past pytest's default 900 s.
@pytest.mark.timeout(1800)
def test_a_worker_resumed_after_a_takeover_saves_nothing_and_the_numbers_equal_the_files(client, stack):
    started = time.monotonic()
    requests = [chat_request(f"o{i}", f"overlap {i}", max_tokens=8, temperature=0, ignore_eos=True) for i in range(N)]
    batch = submit(client, requests)
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 32, timeout=600, interval=0.1)

    db = sqlite3.connect(f"file:{stack.var_dir / 'db.sqlite3'}?mode=ro", uri=True, timeout=10)
    second = Stack(stack.var_dir, env=E2E_ENV, log_prefix="overlap-")
    frozen = stack.worker_processes()
    try:
        try:
            signal_all(frozen, signal.SIGSTOP)
            first_holder, _, done_at_pause = lease(db, batch.id)
            assert first_holder and done_at_pause < N, "the batch ended before the pause; make it longer"
            paused = time.monotonic()
            wait_lease(db, batch.id, lambda holder, age, done: age > STALE + 1, STALE + 30, "lease not stale")

            # A new cluster requeues stale batches as it starts, and takes this one over.
            second.start_worker()
            # With the first frozen, any progress is the second's. On a fast machine the
            # second can finish the rest between two polls, leaving no holder to see.
            holder, _, _ = wait_lease(
                db,
                batch.id,
                lambda holder, age, done: holder != first_holder and done > done_at_pause,
                600,
                "no takeover with progress",
            )
            took_over = time.monotonic()
        finally:
            signal_all(frozen, signal.SIGCONT)
        batch = wait_finished(client, batch.id, timeout=600)
        finished = time.monotonic()
    finally:
        second.stop()
        db.close()

    assert batch.status == "completed"
    output = read_lines(client, batch.output_file_id)
    errors = read_lines(client, batch.error_file_id)
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(f"o{i}" for i in range(N)), "each custom_id exactly once"
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (N, len(output), len(errors))
    usage = [line["response"]["body"]["usage"] for line in output]
    assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in usage)
    assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in usage)
    assert batch.usage.output_tokens == 8 * len(output)

    # The overlap really happened: the resumed worker tried to save and was told its lease was gone.
    first_pid = first_holder.rpartition(":")[2]
    assert log_lines(stack.var_dir, f"[{first_pid}] [{batch.id}] workers.runner: batch {batch.id} was taken over")
    assert holder != first_holder
    taker = holder or "the second cluster, which had finished"
    print(
        f"\nlease overlap: {N} requests; paused at {done_at_pause} done, taken over by {taker} "
        f"{took_over - paused:.1f} s after the pause (stale limit {STALE} s); "
        f"finished {finished - took_over:.1f} s later; test {finished - started:.1f} s"
    )
