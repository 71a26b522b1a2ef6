"""Settings for the fast tests: pytest-django's test database, small limits."""

import tempfile

from .settings import *  # noqa: F403

VAR_DIR = Path(tempfile.mkdtemp(prefix="vllm-batch-test-"))  # noqa: F405
FILES_ROOT = VAR_DIR / "files"
STORAGES["default"]["OPTIONS"]["location"] = str(FILES_ROOT)  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
Q_CLUSTER = {**Q_CLUSTER, "sync": True}  # noqa: F405
