"""The `vllm-batch` console script: `vllm-batch worker status` = `manage.py worker status`,
`vllm-batch watchdog` = `manage.py watchdog`."""

import os
import sys

from django.core.management import execute_from_command_line

from batchsite.startup import prepare


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchsite.settings")
    prepare()
    execute_from_command_line(["vllm-batch", *sys.argv[1:]])
