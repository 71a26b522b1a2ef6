"""The `vllm-batch` console script: `vllm-batch worker status` = `manage.py worker status`."""

import os
import sys
from pathlib import Path


def main():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["vllm-batch", *sys.argv[1:]])
