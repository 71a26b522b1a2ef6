"""Settings for the fast tests: pytest-django's test database, small limits."""

import tempfile

from .settings import *

VAR_DIR = Path(tempfile.mkdtemp(prefix="vllm-batch-test-"))
FILES_ROOT = VAR_DIR / "files"
STORAGES["default"]["OPTIONS"]["location"] = str(FILES_ROOT)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOG_DIR = VAR_DIR / "logs"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir()
