"""The engine's processes under SCHED_IDLE (workers/engine/cpu_policy.py), on real child processes."""

import os
import subprocess
import sys
import time

import psutil
import pytest
from django.core.exceptions import ImproperlyConfigured

from batchsite.settings import env_choice
from workers.engine import cpu_policy

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")

# A child with a few threads, like an engine process with its OpenMP threads; it
# starts one more thread once the policy is set, which must inherit it.
CHILD = """
import os, sys, threading, time
for _ in range(3):
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
late = threading.Thread(target=time.sleep, args=(60,), daemon=True)
late.start()
print(os.sched_getscheduler(late.native_id), flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def child():
    before = cpu_policy.child_pids()
    process = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    yield before, process
    process.kill()
    process.wait(timeout=10)


def policies(pid):
    return {os.sched_getscheduler(thread.id) for thread in psutil.Process(pid).threads()}


def test_idle_sets_every_thread_of_the_new_processes_and_later_threads_inherit_it(child):
    before, process = child
    assert policies(process.pid) == {os.SCHED_OTHER}

    assert cpu_policy.apply_to_engine("idle", before) == 4
    assert policies(process.pid) == {os.SCHED_IDLE}
    process.stdin.write("\n")
    process.stdin.flush()
    assert int(process.stdout.readline()) == os.SCHED_IDLE
    # This process (the worker: heartbeat, batch loop) keeps the normal policy.
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_normal_leaves_the_processes_alone(child):
    before, process = child
    assert cpu_policy.apply_to_engine("normal", before) == 0
    assert policies(process.pid) == {os.SCHED_OTHER}


def test_processes_that_were_there_before_are_left_alone(child):
    _, process = child
    assert cpu_policy.apply_to_engine("idle", cpu_policy.child_pids()) == 0
    assert policies(process.pid) == {os.SCHED_OTHER}


def test_a_process_gone_meanwhile_is_skipped(child):
    _, process = child
    gone = psutil.Process(process.pid)
    process.kill()
    process.wait(timeout=10)
    time.sleep(0.1)
    assert cpu_policy.apply("idle", [gone]) == 0


def test_the_setting_takes_only_its_choices(monkeypatch):
    monkeypatch.setenv("VLLM_BATCH_ENGINE_CPU_POLICY", " Normal ")
    assert env_choice("VLLM_BATCH_ENGINE_CPU_POLICY", "idle", ("idle", "normal")) == "normal"
    monkeypatch.setenv("VLLM_BATCH_ENGINE_CPU_POLICY", "")
    assert env_choice("VLLM_BATCH_ENGINE_CPU_POLICY", "idle", ("idle", "normal")) == "idle"
    monkeypatch.setenv("VLLM_BATCH_ENGINE_CPU_POLICY", "realtime")
    with pytest.raises(ImproperlyConfigured, match="idle, normal"):
        env_choice("VLLM_BATCH_ENGINE_CPU_POLICY", "idle", ("idle", "normal"))
