"""vLLM's engine processes under Linux's SCHED_IDLE (VLLM_BATCH_ENGINE_CPU_POLICY=idle).

While a batch runs the engine keeps every CPU it has busy (on the CPU backend its
OpenMP threads spin). At the normal policy a web request that wakes up takes its
turn behind them: on 2 cores a Label Studio webhook, answered in 12 ms with the
worker idle, took up to 200 ms (p99) with a batch running. Under SCHED_IDLE the
kernel runs any normal thread that wakes up at once and gives the engine what is
left, which is all of it when nothing else wants the CPUs.

Only the engine's processes: the worker's own threads (heartbeat, realtime
server, the batch loop) keep the normal policy. Lowering a policy needs no
privilege, and the threads the engine starts later inherit it.
"""

import logging
import os

import psutil

logger = logging.getLogger(__name__)

PASSES = 3  # a thread started while the policy is being set is caught by the next pass


def child_pids():
    return {child.pid for child in psutil.Process().children(recursive=True)}


def started_since(before):
    """The processes under this one that were not among the pids `before`."""
    return [child for child in psutil.Process().children(recursive=True) if child.pid not in before]


def apply(policy, processes):
    """Sets `policy` ("idle"; "normal" leaves them alone) on every thread of
    `processes`; returns the number of threads set."""
    if policy != "idle" or not hasattr(os, "SCHED_IDLE"):
        return 0
    done = set()
    for _ in range(PASSES):
        found = {thread.id for process in processes for thread in _threads(process)} - done
        if not found:
            break
        for tid in found:
            try:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            except OSError:
                continue  # the thread ended meanwhile
            done.add(tid)
    return len(done)


def _threads(process):
    try:
        return process.threads()
    except psutil.Error:
        return []


def apply_to_engine(policy, before):
    """After an engine started: its processes (started since `before`) get `policy`."""
    processes = started_since(before)
    count = apply(policy, processes)
    if count:
        logger.info("engine processes %s: %d threads under SCHED_IDLE", [p.pid for p in processes], count)
    return count
