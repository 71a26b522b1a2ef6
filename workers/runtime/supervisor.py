"""`manage.py watchdog`: runs the worker cluster and restarts it when it died or froze.

Where systemd runs the worker, systemd is the supervisor (deploy/systemd/).
Elsewhere (the embedded default, containers) this process is: it starts
`manage.py qcluster` in a session of its own and every interval checks that the
cluster's main process runs, that its workers' heartbeats are fresh and that no
worker reports itself stuck. A cluster that fails a check is killed whole with
SIGKILL (a SIGSTOPped process ignores SIGTERM), every process of its session
included (vLLM's EngineCore too), and started again after a backoff, at most
WATCHDOG_MAX_RESTARTS times an hour; past that the watchdog stops restarting,
logs an error and records itself `failed` with the reason. SIGTERM, SIGINT and
SIGHUP stop the cluster (bounded) and end the watchdog; if the watchdog dies
anyway, the kernel sends the cluster SIGTERM (PR_SET_PDEATHSIG).
"""

import ctypes
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import psutil
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from .. import services
from ..models import Supervisor, Worker

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
# After a start, workers get this long to write their first heartbeat (imports, the realtime server).
START_GRACE_SECONDS = 60.0
# The cluster's own stop is bounded at 120 s (cluster_stop.STOP_TIMEOUT); then it is killed.
STOP_TIMEOUT = 130.0
HOUR = 3600.0


class AlreadyRunning(Exception):
    pass


def lock_path():
    return Path(settings.VLLM_BATCH["VAR_DIR"]) / f"watchdog-{settings.Q_CLUSTER.get('name', 'cluster')}.lock"


class PidLock:
    """An flock on a file under the var dir: a second watchdog of the same cluster
    on this machine finds the first (its pid is in the file) instead of fighting it."""

    def __init__(self, path):
        self.path = Path(path)
        self.file = None

    def acquire(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")  # noqa: SIM115  held open while the watchdog runs
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "?"
            file.close()
            raise AlreadyRunning(f"a watchdog is already running (pid {holder}, lock {self.path})") from None
        file.seek(0)
        file.truncate()
        file.write(str(os.getpid()))
        file.flush()
        self.file = file
        return self

    def release(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def _die_with_parent():
    """In the child before exec: SIGTERM when the watchdog dies (the cluster then stops itself)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def cluster_command():
    manage = Path(settings.BASE_DIR) / "manage.py"
    if manage.exists():
        return [sys.executable, str(manage), "qcluster"]
    # Installed as a package without the source tree: the console script's entry point.
    return [sys.executable, "-c", "from batchsite.cli import main; main()", "qcluster"]


def session_processes(sid):
    """Every process of the session `sid`: the cluster and whatever it started,
    also those orphaned when the cluster's main process died."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and os.getsid(process.pid) == sid:
                found.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def _dead(process):
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_dead(processes, timeout):
    """Waits (bounded) until each process is gone or a zombie: a killed grandchild
    stays a zombie until whoever inherited it reaps it, which is not ours to wait for."""
    deadline = time.monotonic() + timeout
    alive = list(processes)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if not _dead(p)]
        if alive:
            time.sleep(0.05)
    return alive


class Watchdog:
    def __init__(self, *, interval=None, timeout=None, max_restarts=None, backoff=None, backoff_max=None, command=None):
        config = settings.VLLM_BATCH
        self.interval = interval or config["WATCHDOG_INTERVAL"]
        self.timeout = timeout or config["WATCHDOG_TIMEOUT_BEATS"] * config["HEARTBEAT_SECONDS"]
        self.max_restarts = config["WATCHDOG_MAX_RESTARTS"] if max_restarts is None else max_restarts
        self.backoff = config["WATCHDOG_BACKOFF_SECONDS"] if backoff is None else backoff
        self.backoff_max = backoff_max or config["WATCHDOG_BACKOFF_MAX_SECONDS"]
        self.command = command or cluster_command()
        self.stop_event = threading.Event()
        self.stop_signal = None
        self.proc = None
        self.started = 0.0
        self.restart_times = deque()
        self.record = None
        self.known_pids = set()

    # -- the cluster -----------------------------------------------------------

    def start_cluster(self):
        self.proc = subprocess.Popen(
            self.command, cwd=settings.BASE_DIR, start_new_session=True, preexec_fn=_die_with_parent
        )
        self.started = time.monotonic()
        self.known_pids = set()
        logger.info("watchdog: started the cluster, pid %s", self.proc.pid)
        services.supervisor_update(self.record, cluster_pid=self.proc.pid, state=Supervisor.State.RUNNING)

    def kill_cluster(self):
        """SIGKILL to every process of the cluster's session; returns their pids."""
        if self.proc is None:
            return set()
        processes = session_processes(self.proc.pid)
        for process in processes:
            try:
                process.kill()
            except psutil.Error:
                pass
        wait_dead(processes, timeout=30)
        self._reap()
        return {p.pid for p in processes}

    def stop_cluster(self, timeout=STOP_TIMEOUT):
        """SIGTERM to the cluster (its own stop is bounded), SIGKILL to what is left after `timeout`."""
        if self.proc is None:
            return
        processes = session_processes(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    # A frozen (SIGSTOPped) process acts on SIGTERM only once it runs again.
                    process.send_signal(signal.SIGCONT)
                except psutil.Error:
                    pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("watchdog: the cluster did not stop within %.0f s: killing it", timeout)
        _gone, alive = psutil.wait_procs([p for p in processes if p.is_running()], timeout=1)
        if alive or self.proc.poll() is None:
            self.kill_cluster()
        self._reap()

    def _reap(self):
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def cluster_pids(self):
        if self.proc is None:
            return set()
        return {p.pid for p in session_processes(self.proc.pid)}

    # -- the checks ------------------------------------------------------------

    def problem(self):
        """Why the cluster must be restarted, or None while it is healthy."""
        code = self.proc.poll()
        if code is not None:
            if code < 0:
                return f"killed: the cluster's process died of {signal.Signals(-code).name}"
            return f"the cluster's process exited with code {code}"
        pids = self.cluster_pids()
        workers = list(
            Worker.objects.filter(hostname=socket.gethostname(), pid__in=pids).exclude(state__in=services.GONE_STATES)
        )
        self.known_pids |= {w.pid for w in workers}
        for worker in workers:
            if worker.unhealthy_reason:
                return f"stuck: worker {worker.name}: {worker.unhealthy_reason}"
        running_for = time.monotonic() - self.started
        now = timezone.now()
        ages = [(now - w.last_seen).total_seconds() for w in workers]
        if workers and min(ages) > self.timeout:
            return f"frozen: no heartbeat for {min(ages):.0f} s (timeout {self.timeout:.0f} s)"
        if not workers and running_for > max(self.timeout, START_GRACE_SECONDS):
            return f"frozen: no worker has written a heartbeat in the {running_for:.0f} s since the start"
        return None

    def restart(self, reason):
        now = time.monotonic()
        while self.restart_times and now - self.restart_times[0] > HOUR:
            self.restart_times.popleft()
        pids = self.kill_cluster() | self.known_pids
        lost = services.workers_mark_lost(
            queryset=Worker.objects.filter(hostname=socket.gethostname(), pid__in=pids), reason=reason
        )
        logger.warning("watchdog: %s; killed the cluster (%d worker(s) marked lost)", reason, lost)
        if len(self.restart_times) >= self.max_restarts:
            count = len(self.restart_times)
            text = f"gave up: {count} restarts within the hour (limit {self.max_restarts}); last: {reason}"
            logger.error("watchdog: %s", text)
            services.supervisor_update(self.record, state=Supervisor.State.FAILED, last_reason=text, cluster_pid=None)
            self.proc = None
            return False
        delay = (
            0.0 if not self.restart_times else min(self.backoff_max, self.backoff * 2 ** (len(self.restart_times) - 1))
        )
        self.restart_times.append(now)
        services.supervisor_update(
            self.record,
            state=Supervisor.State.RESTARTING,
            restarts=self.record.restarts + 1,
            last_reason=reason,
            last_restart_at=timezone.now(),
        )
        if delay:
            logger.info("watchdog: restarting in %.0f s", delay)
            if self.stop_event.wait(delay):
                return False
        self.start_cluster()
        return True

    # -- the loop --------------------------------------------------------------

    def _on_signal(self, signum, frame):
        self.stop_signal = signum
        self.stop_event.set()

    def run(self):
        lock = PidLock(lock_path()).acquire()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.record = services.supervisor_start(pid=os.getpid(), cluster_name=settings.Q_CLUSTER.get("name", ""))
        try:
            self.start_cluster()
            while not self.stop_event.wait(self.interval):
                try:
                    self.check()
                except Exception:
                    logger.exception("watchdog: check failed")
                finally:
                    close_old_connections()
        finally:
            logger.info("watchdog: stopping (signal %s)", self.stop_signal)
            self.stop_cluster()
            try:
                services.supervisor_update(self.record, state=Supervisor.State.STOPPED, cluster_pid=None)
            except Exception:
                logger.exception("watchdog: could not record the stop")
            lock.release()

    def check(self):
        if self.proc is None:  # gave up
            services.supervisor_update(self.record)
        else:
            reason = self.problem()
            if reason:
                self.restart(reason)
            else:
                services.supervisor_update(self.record, state=Supervisor.State.RUNNING)
        # After the restart, which names why its workers were lost.
        services.workers_reap()
