"""What every process does before Django serves or runs a command: create the
directories it writes to and, on a fresh installation, the secret key file.

Kept out of settings.py so that importing the settings writes nothing. Called by
manage.py, the WSGI and ASGI entry points and the `vllm-batch` console script.
"""

import os
import secrets
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _secret_key(path):
    """The key in `path`, written first (readable by its owner only) if there is none.

    Several processes may start at once (gunicorn's workers, the cluster): the key
    is written whole to a private temporary file (mkstemp: mode 0600 from the
    start) and linked into place, which fails if another process got there
    first; then that one's key is read. No process ever sees a half-written file."""
    path = Path(path)
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(50)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return path.read_text().strip()
    finally:
        os.unlink(tmp)
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
