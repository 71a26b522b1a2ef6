"""The import rules of pyproject.toml's [tool.importlinter] (the README's code map) hold."""

import os
import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def test_lint_imports_keeps_every_contract():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


WEB_PROCESS = """
import sys
import batchsite.wsgi
import batchsite.urls
print(sorted(m for m in sys.modules if m == "vllm" or m.startswith(("workers.engine", "workers.runtime", "devtools"))))
"""


def test_the_web_process_loads_neither_the_engine_nor_the_worker_runtime(tmp_path):
    env = {**os.environ, "VLLM_BATCH_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "batchsite.settings"}
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", WEB_PROCESS], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
