"""django-q2's qcluster, plus a prompt stop for busy workers.

django-q2 stops a worker by queueing a STOP after its current task, and its
workers ignore SIGINT; a batch task may run for a whole slice (minutes). Here the
cluster also passes SIGTERM/SIGINT on to busy workers, which then save their
chunk, hand the batch back to the queue and exit (workers/lifecycle.py).
"""

import os
import signal
import time

import psutil
from django_q.cluster import Cluster
from django_q.management.commands.qcluster import Command as QClusterCommand

STOP_TIMEOUT = 120


def signal_busy_workers(sig=signal.SIGTERM):
    for process in psutil.Process().children(recursive=True):
        try:
            title = " ".join(process.cmdline())
            if title.startswith("qcluster") and " processing " in title:
                process.send_signal(sig)
        except psutil.Error:
            continue


class Command(QClusterCommand):
    def handle(self, *args, **options):
        cluster = Cluster()
        stop_cluster = cluster.sig_handler

        def stop(signum, frame):
            processes = psutil.Process().children(recursive=True)
            # Busy workers first: the cluster's stop blocks until every worker exited.
            signal_busy_workers()
            time.sleep(0.3)
            if cluster.sentinel is not None and cluster.sentinel.is_alive():
                stop_cluster(signum, frame)
                return
            # The whole process group got the signal (systemd's default): django-q2's
            # sentinel died of it, and its stop would wait forever on a shared Event
            # the dead process may hold. Wait for the workers ourselves, bounded.
            psutil.wait_procs([p for p in processes if p.is_running()], timeout=STOP_TIMEOUT)
            os._exit(0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        cluster.start()
        if options.get("run_once", False):
            cluster.stop()
