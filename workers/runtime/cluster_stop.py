"""Stopping a whole django-q2 cluster within a bound, whoever got the signal.

django-q2 stops a worker by queueing a STOP after its current task, and its
workers ignore SIGINT; a batch task may run for a whole slice (minutes). So on
SIGTERM/SIGINT the cluster's main process first passes the signal on to busy
workers, which save their chunk, hand the batch back and exit
(workers/runtime/lifecycle.py), then tells the sentinel to stop the rest.

django-q2's own stop can hang for ever: multiprocessing's Event.set() waits
until every process blocked in Event.wait() has woken, and the sentinel, the
one waiter, may have died inside wait() of the same SIGTERM (systemd signals the
whole control group) or at any moment after the main process checked it. So the
set is bounded, and the main process then waits for its children itself.
"""

import logging
import os
import signal
import time

import psutil

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 120
EVENT_SET_TIMEOUT = 2.0


def signal_busy_workers(sig=signal.SIGTERM):
    for process in psutil.Process().children(recursive=True):
        try:
            title = " ".join(process.cmdline())
            if title.startswith("qcluster") and " processing " in title:
                process.send_signal(sig)
        except psutil.Error:
            continue


class _GaveUp(Exception):
    pass


def set_event_bounded(event, seconds=EVENT_SET_TIMEOUT):
    """event.set(), giving up after `seconds` on a waiter that died mid-wait.

    Event.set() raises the flag before it waits for the waiters, so a live
    waiter polling with a timeout (the sentinel's guard loop) still sees it.
    Main thread only: it uses SIGALRM to leave the blocked semaphore wait.
    """

    def give_up(signum, frame):
        raise _GaveUp

    previous = signal.signal(signal.SIGALRM, give_up)
    earlier_alarm, _interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        event.set()
        return True
    except _GaveUp:
        logger.warning("a process waiting on the cluster's stop event died; not waiting for it")
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if earlier_alarm:
            signal.setitimer(signal.ITIMER_REAL, max(earlier_alarm - (time.monotonic() - started), 0.001))


def stop_cluster(cluster, timeout=STOP_TIMEOUT):
    """Stops every process of `cluster` (started in this process) within `timeout`
    seconds, killing what is left after it; returns the processes that had to be killed."""
    processes = psutil.Process().children(recursive=True)
    signal_busy_workers()
    logger.info("Q Cluster %s stopping.", cluster.name)
    if cluster.stop_event is not None:
        set_event_bounded(cluster.stop_event)
    _gone, alive = psutil.wait_procs([p for p in processes if p.is_running()], timeout=timeout)
    for process in alive:
        logger.warning("process %s did not stop within %s s: killing it", process.pid, timeout)
        try:
            process.kill()
        except psutil.Error:
            pass
    logger.info("Q Cluster %s has stopped.", cluster.name)
    return alive


def install_stop_handlers(cluster):
    """SIGTERM/SIGINT stop the cluster within a bound and end this process."""
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        stop_cluster(cluster)
        # The main process sits in multiprocessing's exit handler, joining the
        # sentinel; every child is gone now, so leave without it.
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
