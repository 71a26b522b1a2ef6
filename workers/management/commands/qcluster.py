"""django-q2's qcluster, with a stop that is prompt for busy workers and bounded
whoever got the signal (workers/runtime/cluster_stop.py)."""

from django_q.cluster import Cluster
from django_q.management.commands.qcluster import Command as QClusterCommand

from workers.runtime.cluster_stop import install_stop_handlers


class Command(QClusterCommand):
    def handle(self, *args, **options):
        cluster = Cluster()
        install_stop_handlers(cluster)
        cluster.start()
        if options.get("run_once", False):
            cluster.stop()
