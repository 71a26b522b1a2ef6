from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from jobs.models import Batch
from labeling import bulk, push


class Command(BaseCommand):
    help = "Label Studio projects: predict every task through a batch, store a finished batch's predictions."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        predict = sub.add_parser(
            "predict",
            help="Predict the project's tasks as one batch; its results become Label Studio predictions.",
        )
        predict.add_argument("project", help='Label Studio project id, or its key "<id>.<created_at>".')
        predict.add_argument(
            "--wait",
            action="store_true",
            help="Wait for the batch and store the predictions here (else the worker cluster stores them).",
        )
        predict.add_argument("--timeout", type=float, default=3600.0, help="Seconds --wait waits at most.")
        predict.add_argument(
            "--redo", action="store_true", help="Also tasks that have this model version's prediction."
        )
        predict.add_argument("--owner", help="Username owning the batch (default: the 'labelstudio' service user).")
        push = sub.add_parser("push", help="Store a finished bulk batch's predictions in Label Studio (again).")
        push.add_argument("batch", help="The batch id, e.g. batch_...")
        push_batch = sub.add_parser(
            "push-batch",
            help="Push a finished chat or completions batch to a Label Studio project: a task per request, "
            "its output as the prediction when valid for the labeling config. Pushing again adds nothing.",
        )
        push_batch.add_argument("batch", help="The batch id, e.g. batch_...")
        push_batch.add_argument(
            "project", nargs="?", help="Label Studio project id (default: the batch's labelstudio_project metadata)."
        )
        push_batch.add_argument(
            "--data-key", help="The task data key the text goes under (default: the config's first, e.g. text)."
        )

    def handle(self, action, **options):
        try:
            if action == "predict":
                self.predict(options)
            elif action == "push-batch":
                self.push_batch(options)
            else:
                self.push(options["batch"])
        except (bulk.BulkError, push.PushError) as exc:
            raise CommandError(str(exc)) from None

    def predict(self, options):
        owner = None
        if options["owner"]:
            owner = get_user_model().objects.filter(username=options["owner"]).first()
            if owner is None:
                raise CommandError(f"No user {options['owner']!r}.")
        project = bulk.find_project(options["project"])
        if not options["wait"]:
            started = bulk.predict_start(project=project, owner=owner, redo=options["redo"], push_when_done=True)
            self.stdout.write(bulk.describe(started))
            if started.batch is not None:
                self.stdout.write("The worker cluster stores the predictions in Label Studio when the batch completes.")
            return
        started, pushed = bulk.predict(project=project, owner=owner, timeout=options["timeout"], redo=options["redo"])
        self.stdout.write(bulk.describe(started))
        if pushed is not None:
            self.report(pushed)

    def push(self, batch_id):
        batch = Batch.objects.filter(pk=batch_id).first()
        if batch is None:
            raise CommandError(f"No batch {batch_id!r}.")
        self.report(bulk.predict_push(batch=batch))

    def push_batch(self, options):
        batch = Batch.objects.filter(pk=options["batch"]).first()
        if batch is None:
            raise CommandError(f"No batch {options['batch']!r}.")
        report = push.push_batch(batch=batch, project=options["project"], data_key=options["data_key"])
        self.report(report)

    def report(self, pushed):
        self.stdout.write(str(pushed))
        for error in pushed.errors:
            self.stderr.write(error)
