import json
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from batchsite.errors import ApiError
from jobs.models import Batch
from labeling import bulk, comparison, examples, push, sync


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
        pull = sub.add_parser(
            "sync", help="Pull the project's tasks, annotations and predictions from Label Studio into vllm-batch."
        )
        pull.add_argument("project", help='Label Studio project id, or its key "<id>.<created_at>".')
        compare = sub.add_parser(
            "compare",
            help="Zero-shot LLM, few-shot LLM and the embedding predictor on the same held-out ground truth, "
            "as the number of ground-truth examples grows.",
        )
        compare.add_argument("project", help='Label Studio project id, or its key "<id>.<created_at>".')
        compare.add_argument("--sizes", default="20,50,100,200,500", help="Numbers of examples, comma-separated.")
        compare.add_argument("--held-out", type=int, help="Ground-truth tasks scored (default a quarter, at most 200).")
        compare.add_argument("--seed", type=int, default=0)
        compare.add_argument("--k", type=int, help="Few-shot examples per task (default the project's, else 4).")
        compare.add_argument(
            "--methods", default="zero_shot,few_shot,embedding", help="Any of zero_shot, few_shot, embedding."
        )
        compare.add_argument("--json", help="Also write the whole report (per-control figures) to this file.")
        embed = sub.add_parser("embed", help="Embed the project's ground truth that has no stored vector yet.")
        embed.add_argument("project", help='Label Studio project id, or its key "<id>.<created_at>".')

    def handle(self, action, **options):
        try:
            if action == "predict":
                self.predict(options)
            elif action == "push-batch":
                self.push_batch(options)
            elif action == "compare":
                self.compare(options)
            elif action == "embed":
                count = examples.embed_ground_truth(bulk.find_project(options["project"]))
                self.stdout.write(f"Embedded {count} ground-truth texts.")
            elif action == "sync":
                self.stdout.write(str(sync.sync_project(project=bulk.find_project(options["project"]))))
            else:
                self.push(options["batch"])
        except (bulk.BulkError, push.PushError, sync.SyncError) as exc:
            raise CommandError(str(exc)) from None
        except ApiError as exc:  # the comparison's own, or no worker holds a model it needs
            raise CommandError(exc.message) from None

    def compare(self, options):
        report = comparison.learning_curve(
            bulk.find_project(options["project"]),
            [int(s) for s in options["sizes"].split(",") if s.strip()],
            held_out=options["held_out"],
            seed=options["seed"],
            methods=[m.strip() for m in options["methods"].split(",") if m.strip()],
            k=options["k"],
        )
        if options["json"]:
            Path(options["json"]).write_text(json.dumps(report, indent=1))
        self.stdout.write(
            f"{report['held_out']} held-out ground-truth tasks, examples drawn from the other {report['pool']} "
            f"(seed {report['seed']}); few-shot k={report['k']}; LLM {report['model']}, "
            f"embeddings {report['embedding_model']}"
        )
        self.stdout.write("examples  zero-shot  few-shot  embedding")

        def cell(value):
            return f"{value:9.3f}" if value is not None else "        -"

        for size, zero, few, embedding in comparison.summary_rows(report):
            self.stdout.write(f"{size:8d} {cell(zero)} {cell(few)} {cell(embedding)}")
        if report["skipped_sizes"]:
            self.stdout.write(f"skipped (more than the pool): {report['skipped_sizes']}")

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
