"""django-q2's qcluster, plus a prompt stop for busy workers.

django-q2 stops a worker by queueing a STOP after its current task, and its
workers ignore SIGINT; a batch task may run for a whole slice (minutes). Here the
cluster also passes SIGTERM/SIGINT on to busy workers, which then save their
chunk, hand the batch back to the queue and exit (workers/lifecycle.py).
"""

import signal

import psutil
from django_q.cluster import Cluster
from django_q.management.commands.qcluster import Command as QClusterCommand


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
            # Busy workers first: the cluster's stop blocks until every worker exited.
            signal_busy_workers()
            stop_cluster(signum, frame)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        cluster.start()
        if options.get("run_once", False):
            cluster.stop()
