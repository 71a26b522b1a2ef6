"""The production configuration: gunicorn's keep-alive, `check --deploy` with the
production environment, and the secret key file made once, whole and private."""

import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from batchsite import startup

PROJECT_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
GUNICORN = str(Path(sys.executable).parent / "gunicorn")


def clean_env(tmp_path, **extra):
    """This machine's environment without Django's or vllm-batch's own variables."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DJANGO_", "VLLM_BATCH_", "SECRET_KEY", "DATABASE_", "REDIS_", "CSRF_", "ALLOWED_"))
    }
    return {**env, "VLLM_BATCH_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "batchsite.settings", **extra}


PRODUCTION = {
    "SECRET_KEY": "k" * 20 + "production-secret-key-of-fifty-chars-and-more",
    "ALLOWED_HOSTS": "batch.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://batch.example.org",
    "VLLM_BATCH_HTTPS": "true",
}


def check_deploy(env):
    return subprocess.run(
        [PYTHON, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_production_environment(tmp_path):
    result = check_deploy(clean_env(tmp_path, **PRODUCTION))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_warns_without_https(tmp_path):
    env = clean_env(tmp_path, **{k: v for k, v in PRODUCTION.items() if k != "VLLM_BATCH_HTTPS"})
    result = check_deploy(env)
    assert result.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in result.stderr


HTTPS_PROBE = """
import django
django.setup()
from django.conf import settings
print(settings.SECURE_PROXY_SSL_HEADER, settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE,
      settings.SECURE_HSTS_SECONDS, settings.CSRF_TRUSTED_ORIGINS)
"""


def test_https_settings_come_from_the_environment(tmp_path):
    result = subprocess.run(
        [PYTHON, "-c", HTTPS_PROBE],
        cwd=PROJECT_DIR,
        env=clean_env(tmp_path, **PRODUCTION, VLLM_BATCH_HSTS_SECONDS="600"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "('HTTP_X_FORWARDED_PROTO',",
        "'https')",
        "True",
        "True",
        "600",
        "['https://batch.example.org']",
    ]


# -- gunicorn ---------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gunicorn(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [GUNICORN, "batchsite.wsgi", "-c", "deploy/gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "-w", "1"],
        cwd=PROJECT_DIR,
        env=clean_env(tmp_path, SECRET_KEY="test-key"),
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "gunicorn.log", "w"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "gunicorn did not answer within 60 s"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_gunicorn_keeps_a_polling_clients_connection_open(gunicorn):
    """A client polling every few seconds reuses its connection: gunicorn's default
    2 s keep-alive closed it under such a client, which saw "Connection error"."""
    connection = http.client.HTTPConnection("127.0.0.1", gunicorn, timeout=10)
    for _ in range(3):
        connection.request("GET", "/v1/no-such-path")
        response = connection.getresponse()
        response.read()
        assert response.status == 404
        assert response.getheader("Connection", "").lower() != "close"
        sock = connection.sock
        time.sleep(3)
        assert connection.sock is sock, "the connection was reopened"
    connection.close()


# -- the secret key file -------------------------------------------------------------


def test_the_secret_key_file_is_private_and_kept(tmp_path):
    path = tmp_path / "secret_key"
    key = startup._secret_key(path)
    assert len(key) >= 50
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert startup._secret_key(path) == key
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]


def test_processes_starting_together_get_one_whole_key(tmp_path, monkeypatch):
    """The first starter is slow to make its key; the second must not read an empty file."""
    path = tmp_path / "secret_key"
    real_token = startup.secrets.token_urlsafe
    first = threading.Event()

    def slow_first_token(n):
        if not first.is_set():
            first.set()
            time.sleep(0.5)
        return real_token(n)

    monkeypatch.setattr(startup.secrets, "token_urlsafe", slow_first_token)
    keys = []
    slow = threading.Thread(target=lambda: keys.append(startup._secret_key(path)))
    slow.start()
    assert first.wait(5)
    keys.append(startup._secret_key(path))
    slow.join(10)
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0], keys
    assert path.read_text() == keys[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


STORAGE_PROBE = """
import json
import django
django.setup()
from django.conf import settings
print(json.dumps(settings.STORAGES["default"]))
"""


def test_files_go_to_an_s3_bucket_when_one_is_named(tmp_path):
    def storage(**extra):
        result = subprocess.run(
            [PYTHON, "-c", STORAGE_PROBE],
            cwd=PROJECT_DIR,
            env=clean_env(tmp_path, **extra),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert storage() == {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path / "files")},
    }
    shared = storage(VLLM_BATCH_FILES_ROOT="/mnt/shared/vllm-batch")
    assert shared["OPTIONS"] == {"location": "/mnt/shared/vllm-batch"}
    s3 = storage(VLLM_BATCH_S3_BUCKET="batch-files", VLLM_BATCH_S3_ENDPOINT_URL="https://minio.example.org:9000")
    assert s3 == {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": "batch-files",
            "location": "vllm-batch",
            "endpoint_url": "https://minio.example.org:9000",
            "region_name": None,
            "file_overwrite": False,
        },
    }
