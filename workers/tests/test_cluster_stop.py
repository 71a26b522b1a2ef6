"""The bounded cluster stop, with real processes (no cluster, no engine)."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from django.conf import settings

from workers.runtime.cluster_stop import set_event_bounded

CONTEXT = multiprocessing.get_context("fork")


def _wait_forever(event):
    event.wait()


def _wait_in_cycles(event):
    while not event.wait(0.2):
        pass


def wait_until_waited_on(event, timeout=10):
    """Returns once another process sleeps in event.wait() (the Condition counts its sleepers)."""
    deadline = time.monotonic() + timeout
    while event._cond._sleeping_count.get_value() < 1:
        assert time.monotonic() < deadline, "the waiter never waited"
        time.sleep(0.01)


def test_event_set_gives_up_on_a_waiter_that_died_mid_wait():
    """Plain Event.set() would block for ever here: it waits for the dead waiter to wake."""
    event = CONTEXT.Event()
    waiter = CONTEXT.Process(target=_wait_forever, args=(event,))
    waiter.start()
    wait_until_waited_on(event)
    os.kill(waiter.pid, signal.SIGKILL)
    waiter.join()

    started = time.monotonic()
    assert set_event_bounded(event, seconds=0.5) is False
    assert time.monotonic() - started < 2
    assert event.is_set(), "the flag is raised before the wait"


def test_event_set_wakes_a_live_waiter_at_once():
    event = CONTEXT.Event()
    waiter = CONTEXT.Process(target=_wait_in_cycles, args=(event,))
    waiter.start()
    wait_until_waited_on(event)

    assert set_event_bounded(event, seconds=5) is True
    waiter.join(timeout=5)
    assert waiter.exitcode == 0


def test_event_set_keeps_an_earlier_alarm():
    fired = []
    alarm = threading.Event()

    def on_alarm(*args):
        fired.append(True)
        alarm.set()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        assert set_event_bounded(CONTEXT.Event(), seconds=5) is True
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 0.5
        assert alarm.wait(5)
        assert fired == [True]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


STOP_SCRIPT = textwrap.dedent(
    """
    import json, subprocess, sys, time, types
    from workers.runtime.cluster_stop import stop_cluster
    # A child that ignores SIGTERM and never exits on its own, and one that exits at once
    # (when its input closes); each says when it is ready.
    ignore_term = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    stubborn = subprocess.Popen([sys.executable, "-c", ignore_term], stdout=subprocess.PIPE)
    quick = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout.readline() == quick.stdout.readline() == b"ready\\n"
    quick.stdin.close()
    started = time.monotonic()
    killed = stop_cluster(types.SimpleNamespace(name="test", stop_event=None), timeout=1)
    print(json.dumps({"seconds": time.monotonic() - started, "killed": [p.pid for p in killed],
                      "stubborn": stubborn.pid, "stubborn_code": stubborn.wait(5), "quick_code": quick.wait(5)}))
    """
)


def test_stop_cluster_waits_for_children_and_kills_what_is_left_after_the_timeout():
    result = subprocess.run(
        [sys.executable, "-c", STOP_SCRIPT], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["killed"] == [report["stubborn"]]
    assert report["stubborn_code"] == -signal.SIGKILL and report["quick_code"] == 0
    assert 0.9 < report["seconds"] < 10
