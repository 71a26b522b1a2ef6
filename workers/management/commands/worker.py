import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from workers.console import control, logs


class Command(BaseCommand):
    help = "Watch and steer the workers: status, restart, clear-gpu, kill, logs."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        status = sub.add_parser("status", help="Workers, the web API and the queue. Exit 1 when no worker is online.")
        status.add_argument("--json", action="store_true", help="Machine-readable output.")
        status.add_argument("--api-url", default=settings.VLLM_BATCH["API_URL"])
        for name, text in (
            ("restart", "Restart the worker process; it reloads its model."),
            ("clear-gpu", "Unload the model and free device memory; the worker stays up."),
            ("kill", "End the worker process (by signal if it does not answer and runs on this host)."),
        ):
            action = sub.add_parser(name, help=text)
            target = action.add_mutually_exclusive_group(required=True)
            target.add_argument("--worker", help="Worker id or name (host:pid), from `worker status`.")
            target.add_argument("--all", action="store_true", help="Every online worker.")
            action.add_argument("--wait", action="store_true", help="Wait (bounded) for the worker to answer.")
            action.add_argument("--timeout", type=float, default=None, help="Seconds --wait waits at most.")
            if name == "kill":
                action.add_argument("--yes", action="store_true", help="Confirm the kill.")
        log = sub.add_parser("logs", help="Show the worker log.")
        log.add_argument("--tail", type=int, default=100)
        log.add_argument("--follow", action="store_true")
        log.add_argument("--grep", help="Only lines matching this pattern (regex, case-insensitive).")
        log.add_argument("--log", default="worker", choices=["worker", "web"])

    def handle(self, action, **options):
        if action == "status":
            return self.status(options)
        if action == "logs":
            return self.logs(options)
        if action == "kill" and not options["yes"]:
            raise CommandError("kill ends the worker process: add --yes to confirm.")
        workers = control.select_workers(options["worker"], options["all"])
        if not workers:
            raise CommandError("No such worker." if options["worker"] else "No worker is online.")
        for worker, _command, outcome in control.send(
            action, workers, wait=options["wait"], timeout=options["timeout"]
        ):
            self.stdout.write(f"{worker.name}: {action}: {outcome}")

    def status(self, options):
        report = control.status_report(options["api_url"])
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2, default=str))
        else:
            self.stdout.write(control.render_status(report))
        if not report["online"]:
            raise SystemExit(1)

    def logs(self, options):
        path = logs.log_path(options["log"])
        lines = logs.tail(path, max(1, min(options["tail"], 100_000)))
        if options["grep"]:
            lines = logs.grep(lines, options["grep"])
        for line in lines:
            self.stdout.write(line)
        if options["follow"]:
            try:
                for line in logs.follow(path):
                    if not options["grep"] or logs.grep([line], options["grep"]):
                        self.stdout.write(line)
                        self.stdout.flush()
            except KeyboardInterrupt:
                pass
