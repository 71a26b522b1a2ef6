import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from workers.console.engine_args import refused_engine_args
from workers.models import RegisteredModel
from workers.services import model_register


class Command(BaseCommand):
    help = "Registers (or updates) a model the workers can serve, by local path."

    def add_arguments(self, parser):
        parser.add_argument("name", help="The name requests put in `model`.")
        parser.add_argument("path", help="Local directory with the weights and tokenizer.")
        parser.add_argument("--runner", choices=RegisteredModel.Runner.values, default="generate")
        parser.add_argument("--max-model-len", type=int)
        parser.add_argument("--dtype", choices=RegisteredModel.Dtype.values)
        parser.add_argument("--gpu-memory-utilization", type=float)
        parser.add_argument("--tensor-parallel-size", type=int)
        parser.add_argument("--engine-args", help="More vllm.LLM arguments as JSON, e.g. '{\"max_num_seqs\": 128}'.")

    def handle(self, name, path, **options):
        if not Path(path).is_dir():
            raise CommandError(f"{path} is not a directory: models are loaded from local paths.")
        extra = None
        if options["engine_args"]:
            try:
                extra = json.loads(options["engine_args"])
            except ValueError as exc:
                raise CommandError(f"--engine-args is not JSON: {exc}") from None
            problem = refused_engine_args(extra)
            if problem:
                raise CommandError(f"--engine-args: {problem}")
        model, created = model_register(
            name=name,
            path=str(Path(path).resolve()),
            runner=options["runner"],
            max_model_len=options["max_model_len"],
            dtype=options["dtype"],
            gpu_memory_utilization=options["gpu_memory_utilization"],
            tensor_parallel_size=options["tensor_parallel_size"],
            extra_engine_args=extra,
        )
        self.stdout.write(
            f"{'Registered' if created else 'Updated'} model '{model.name}' ({model.runner}) at {model.path}"
        )
