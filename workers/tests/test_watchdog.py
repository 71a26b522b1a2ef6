"""The watchdog (workers/runtime/supervisor.py) on stand-in clusters: plain
processes in a session of their own, with Worker rows as their heartbeat would write."""

import os
import signal
import socket
import sys
import time
from datetime import timedelta

import psutil
import pytest
from django.utils import timezone

from workers.models import Supervisor, Worker
from workers.runtime import supervisor as sv

from .factories import make_worker

# A cluster stand-in: a parent with a child, like qcluster and its worker.
TREE = [
    sys.executable,
    "-c",
    "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "time.sleep(120)",
]


@pytest.fixture
def watchdog(db, settings, tmp_path):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "VAR_DIR": tmp_path, "HEARTBEAT_SECONDS": 1.0}
    dog = sv.Watchdog(interval=0.5, timeout=3.0, max_restarts=2, backoff=0.1, command=TREE)
    dog.record = sv.services.supervisor_start(pid=os.getpid(), cluster_name="test")
    yield dog
    dog.stop_cluster(timeout=5)


def tree_of(dog, count=2, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes = sv.session_processes(dog.proc.pid)
        if len(processes) >= count:
            return processes
        time.sleep(0.05)
    raise AssertionError("the stand-in cluster did not start its child")


def killed(dog):
    dog.proc.kill()
    dog.proc.wait(timeout=10)


def beating(pid, age=0.0):
    return make_worker(hostname=socket.gethostname(), pid=pid, age=age, state=Worker.State.PROCESSING)


def test_a_killed_cluster_is_restarted_and_its_workers_marked_lost(watchdog):
    watchdog.start_cluster()
    first = tree_of(watchdog)
    worker = beating(first[-1].pid)
    assert watchdog.problem() is None

    for process in first:
        process.kill()
    watchdog.proc.wait(timeout=10)
    reason = watchdog.problem()
    assert reason == "killed: the cluster's process died of SIGKILL"

    started = time.monotonic()
    assert watchdog.restart(reason)
    assert time.monotonic() - started < 10
    assert watchdog.proc.poll() is None
    assert {p.pid for p in tree_of(watchdog)}.isdisjoint(p.pid for p in first)
    worker.refresh_from_db()
    assert worker.state == Worker.State.LOST
    assert worker.lost_reason == reason and worker.lost_at is not None
    record = Supervisor.objects.get()
    assert (record.restarts, record.last_reason, record.state) == (1, reason, "running")
    assert record.cluster_pid == watchdog.proc.pid


def test_a_frozen_cluster_is_killed_with_sigkill_whole(watchdog):
    watchdog.start_cluster()
    processes = tree_of(watchdog)
    beating(processes[-1].pid, age=10)
    for process in processes:
        process.send_signal(signal.SIGSTOP)

    reason = watchdog.problem()
    assert reason.startswith("frozen: no heartbeat for 10 s")
    watchdog.restart(reason)

    assert all(sv._dead(p) for p in processes), "the frozen processes must be gone (at most a zombie)"
    assert tree_of(watchdog)


def test_a_worker_reporting_itself_stuck_gets_its_cluster_restarted(watchdog):
    watchdog.start_cluster()
    processes = tree_of(watchdog)
    beating(processes[-1].pid)
    Worker.objects.update(unhealthy_reason="batch b1 made no progress for 31 min")

    assert watchdog.problem() == f"stuck: worker {socket.gethostname()}:{processes[-1].pid}: " + (
        "batch b1 made no progress for 31 min"
    )


def test_past_the_restart_limit_it_stops_restarting_and_records_why(watchdog):
    watchdog.start_cluster()
    for _ in range(2):
        tree_of(watchdog)
        killed(watchdog)
        assert watchdog.restart(watchdog.problem())
    tree_of(watchdog)
    killed(watchdog)

    assert watchdog.restart(watchdog.problem()) is False

    assert watchdog.proc is None
    record = Supervisor.objects.get()
    assert record.state == Supervisor.State.FAILED
    assert record.restarts == 2
    assert record.last_reason.startswith("gave up: 2 restarts within the hour (limit 2); last: killed")
    watchdog.check()  # stays given up
    assert watchdog.proc is None


def test_the_second_restart_waits_for_the_backoff(watchdog):
    watchdog.backoff = 0.5
    watchdog.start_cluster()
    tree_of(watchdog)
    killed(watchdog)
    watchdog.restart(watchdog.problem())  # the first at once
    tree_of(watchdog)
    killed(watchdog)
    started = time.monotonic()
    watchdog.restart(watchdog.problem())
    assert time.monotonic() - started >= 0.5


def test_no_heartbeat_at_all_after_the_start_grace_is_frozen(watchdog, monkeypatch):
    monkeypatch.setattr(sv, "START_GRACE_SECONDS", 0.0)
    watchdog.start_cluster()
    tree_of(watchdog)
    watchdog.started -= 5
    assert watchdog.problem().startswith("frozen: no worker has written a heartbeat")


def test_stop_ends_a_frozen_cluster_too(watchdog):
    watchdog.start_cluster()
    processes = tree_of(watchdog)
    for process in processes:
        process.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    watchdog.stop_cluster(timeout=2)
    assert time.monotonic() - started < 20
    assert all(sv._dead(p) for p in processes)


def test_a_second_watchdog_finds_the_first(tmp_path):
    lock = sv.PidLock(tmp_path / "w.lock").acquire()
    try:
        with pytest.raises(sv.AlreadyRunning, match=f"pid {os.getpid()}"):
            sv.PidLock(tmp_path / "w.lock").acquire()
    finally:
        lock.release()
    sv.PidLock(tmp_path / "w.lock").acquire().release()


def test_the_watchdog_command_refuses_a_second_start(db, settings, tmp_path):
    from django.core.management import CommandError, call_command

    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "VAR_DIR": tmp_path}
    lock = sv.PidLock(sv.lock_path()).acquire()
    try:
        with pytest.raises(CommandError, match="already running"):
            call_command("watchdog")
    finally:
        lock.release()


def test_workers_last_seen_long_ago_are_pruned_but_their_commands_stay(db):
    from workers import services
    from workers.models import WorkerCommand

    old = make_worker(pid=1, state=Worker.State.LOST, age=25 * 3600)
    command = services.command_create(worker=old, action=WorkerCommand.Action.KILL)
    recent = make_worker(pid=2, state=Worker.State.STOPPED, age=3600)

    services.workers_reap(now=timezone.now())

    assert list(Worker.objects.values_list("pk", flat=True)) == [recent.pk]
    command.refresh_from_db()
    assert (command.worker, command.worker_name) == (None, "elsewhere:1")


def test_a_dead_local_worker_and_a_silent_one_are_marked_lost(db):
    from workers import services

    gone = psutil.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = make_worker(hostname=socket.gethostname(), pid=gone.pid)
    silent = make_worker(pid=3, age=600)
    alive = make_worker(pid=4)

    lost, _pruned = services.workers_reap(now=timezone.now() + timedelta(seconds=1))

    assert lost == 2
    for worker in (dead, silent, alive):
        worker.refresh_from_db()
    assert dead.state == silent.state == Worker.State.LOST
    assert "process is gone" in dead.lost_reason
    assert silent.lost_reason.startswith("no heartbeat for")
    assert alive.state == Worker.State.IDLE


def test_admin_shows_the_watchdog_and_lost_workers_with_why(admin_client, db):
    from workers import services

    record = services.supervisor_start(pid=99, cluster_name="test")
    services.supervisor_update(record, state=Supervisor.State.FAILED, restarts=10, last_reason="gave up: 10 restarts")
    make_worker(pid=7, state=Worker.State.LOST, lost_at=timezone.now(), lost_reason="frozen: no heartbeat for 31 s")
    make_worker(pid=8)

    page = admin_client.get("/admin/workers/supervisor/").content.decode()
    assert "gave up: 10 restarts" in page and "failed" in page
    live = admin_client.get("/admin/workers/worker/").context["cl"].result_list
    assert [w.pid for w in live] == [8]
    gone = admin_client.get("/admin/workers/worker/", {"show": "gone"})
    assert [w.pid for w in gone.context["cl"].result_list] == [7]
    assert "frozen: no heartbeat for 31 s" in gone.content.decode()
    card = admin_client.get("/admin/workers/worker/heartbeat.json").json()
    assert [w["pid"] for w in card["workers"]] == [8] and card["others"] == 1
