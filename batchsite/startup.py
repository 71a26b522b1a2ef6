"""What every process does before Django serves or runs a command: create the
directories it writes to and, on a fresh installation, the secret key file.

Kept out of settings.py so that importing the settings writes nothing. Called by
manage.py, the WSGI and ASGI entry points and the `vllm-batch` console script.
"""

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _secret_key(path):
    """The key in `path`, written first (readable by its owner only) if there is none.

    Several processes may start at once (gunicorn's workers, the cluster): the
    first to create the file writes the key, the others read it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    key = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def prepare():
    var_dir = Path(settings.VLLM_BATCH["VAR_DIR"])
    var_dir.mkdir(parents=True, exist_ok=True)
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        Path(database["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # whitenoise serves the admin's files from here, and warns when it is missing.
    Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)
    try:
        settings.SECRET_KEY  # noqa: B018  Django refuses an empty key on first use
    except ImproperlyConfigured:
        settings.SECRET_KEY = _secret_key(settings.SECRET_KEY_FILE)
