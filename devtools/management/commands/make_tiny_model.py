from django.core.management.base import BaseCommand

from devtools.tiny_model import build_tiny_model


class Command(BaseCommand):
    help = "Builds a tiny random-weight Llama with a locally trained tokenizer, offline."

    def add_arguments(self, parser):
        parser.add_argument("path", help="Directory to write the model to.")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, path, seed, **options):
        build_tiny_model(path, seed=seed)
        self.stdout.write(f"Tiny model written to {path}")
