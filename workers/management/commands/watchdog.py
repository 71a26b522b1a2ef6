"""`manage.py watchdog` (`vllm-batch watchdog`): run the worker cluster and restart it when it dies or freezes."""

from django.core.management.base import BaseCommand, CommandError

from workers.runtime.supervisor import AlreadyRunning, Watchdog


class Command(BaseCommand):
    help = (
        "Start the worker cluster (manage.py qcluster) and supervise it: restart it when its process dies, "
        "its heartbeats go stale or a worker is stuck. For machines without systemd."
    )

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=None, help="Seconds between checks.")
        parser.add_argument("--timeout", type=float, default=None, help="Seconds without a heartbeat = frozen.")
        parser.add_argument("--max-restarts", type=int, default=None, help="Restarts allowed within an hour.")

    def handle(self, *args, **options):
        watchdog = Watchdog(
            interval=options["interval"], timeout=options["timeout"], max_restarts=options["max_restarts"]
        )
        try:
            watchdog.run()
        except AlreadyRunning as exc:
            raise CommandError(str(exc)) from None
