"""Settings for the fast tests: pytest-django's test database, small limits."""

import tempfile

from .settings import *

VAR_DIR = Path(tempfile.mkdtemp(prefix="vllm-batch-test-"))
VLLM_BATCH = {**VLLM_BATCH, "VAR_DIR": VAR_DIR, "LOG_DIR": VAR_DIR / "logs"}
SECRET_KEY = "vllm-batch-tests"
STORAGES["default"]["OPTIONS"]["location"] = str(VAR_DIR / "files")
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir()
# Fast tests apply webhook events through the task entry point only (a test turns the inline path on).
LABEL_STUDIO_EVENTS_INLINE = False
