"""One real Label Studio 1.23.2 per test run, connected to the real vllm-batch stack.

scripts/labelstudio installs it into its own virtual environment (cached). The
server starts in the background as soon as collection shows a test of this
directory will run, so it comes up while the vllm-batch stack starts; the
`label_studio` fixture waits for it. Its data directory is a copy of the migrated
template in a temporary directory, its first user is created with a known legacy API
token, and it is stopped (its whole process tree, bounded) when the session ends.
"""

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from labeling.client import LabelStudio

PROJECT_DIR = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

INSTALL_TIMEOUT = 900
READY_TIMEOUT = 180
STOP_TIMEOUT = 15

# What a loopback ML backend and strict prediction checks need, and nothing that phones home.
LABEL_STUDIO_ENV = {
    "ML_BLOCK_LOCAL_IP": "false",
    "SSRF_PROTECTION_ENABLED": "false",
    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
    "fflag_feat_utc_210_prediction_validation_15082025": "true",
    "LATEST_VERSION_CHECK": "false",
    "COLLECT_ANALYTICS": "false",
}
# Only these are passed on from the test run: Label Studio must not see our
# DJANGO_SETTINGS_MODULE or DATABASE_URL.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_tree(pid, timeout=STOP_TIMEOUT):
    """SIGTERM to the process and its descendants, SIGKILL to what is left after `timeout`."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in tree:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)


class LabelStudioServer:
    """Installs (if needed) and starts Label Studio; `ready()` waits until its API answers our token."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="labelstudio-test-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.username = "admin@example.com"
        self.password = secrets.token_urlsafe(12)
        self.token = secrets.token_hex(20)
        self.log_path = self.dir / "label-studio.log"
        self.proc = None
        self.error = None
        self.times = {}
        self._thread = None
        self._stopping = False

    def start_in_background(self):
        self._thread = threading.Thread(target=self._start, name="label-studio-start", daemon=True)
        self._thread.start()

    def _start(self):
        try:
            started = time.monotonic()
            install = subprocess.run(
                [str(PROJECT_DIR / "scripts" / "labelstudio")],
                cwd=PROJECT_DIR,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
            )
            if install.returncode != 0:
                raise RuntimeError(f"scripts/labelstudio failed:\n{install.stdout}\n{install.stderr}")
            executable = Path(install.stdout.strip().splitlines()[-1])
            self.times["install"] = time.monotonic() - started
            data_dir = self.dir / "data"
            template = executable.parent.parent / "data-template"
            if template.is_dir():
                shutil.copytree(template, data_dir)
            env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
            env.update(LABEL_STUDIO_ENV)
            if self._stopping:
                return
            self.started_at = time.monotonic()
            # Label Studio moves to the next port when its port is taken; the wait checks
            # the token on our port, so a stranger's server is never mistaken for it.
            self.proc = subprocess.Popen(
                [
                    str(executable),
                    "start",
                    "--no-browser",
                    "--internal-host",
                    "127.0.0.1",
                    # What /setup tells the ML backend as Label Studio's address.
                    "--host",
                    self.url,
                    "-p",
                    str(self.port),
                    "--data-dir",
                    str(data_dir),
                    "--username",
                    self.username,
                    "--password",
                    self.password,
                    "--user-token",
                    self.token,
                    "--enable-legacy-api-token",
                ],
                cwd=self.dir,
                env=env,
                stdout=open(self.log_path, "ab"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._wait_until_answering()
        except Exception as exc:  # reported by ready(), in the test that needs the server
            self.error = exc

    def _wait_until_answering(self):
        deadline = time.monotonic() + READY_TIMEOUT
        headers = {"Authorization": f"Token {self.token}"}
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/api/projects/", headers=headers, timeout=5).status_code == 200:
                    self.times["start"] = time.monotonic() - self.started_at
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Label Studio did not answer within {READY_TIMEOUT} s:\n{self._log_tail()}")
            time.sleep(0.5)

    def _log_tail(self, lines=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def ready(self):
        self._thread.join(INSTALL_TIMEOUT + READY_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError("Label Studio's install and start did not finish in time")
        if self.error is not None:
            raise RuntimeError(f"Label Studio could not be started: {self.error}")
        return self

    def client(self, **kwargs):
        return LabelStudio(self.url, self.token, **kwargs)

    def stop(self):
        self._stopping = True
        for _ in range(2):  # before and after the start thread ends: it may spawn in between
            if self.proc is not None and self.proc.poll() is None:
                stop_tree(self.proc.pid)
            if self._thread is not None:
                self._thread.join(INSTALL_TIMEOUT + READY_TIMEOUT)
        shutil.rmtree(self.dir, ignore_errors=True)


_server = None


def _server_started():
    global _server
    if _server is None:
        _server = LabelStudioServer()
        _server.start_in_background()
    return _server


def pytest_collection_finish(session):
    if any(Path(str(item.path)).is_relative_to(HERE) for item in session.items):
        _server_started()


def pytest_sessionfinish(session):
    if _server is not None:
        _server.stop()


@pytest.fixture(scope="session")
def label_studio():
    """The running Label Studio: `.url`, `.token`, `.client()`."""
    return _server_started().ready()


@pytest.fixture(scope="session")
def ls(label_studio):
    """A labeling.client.LabelStudio for the test Label Studio."""
    with label_studio.client() as client:
        yield client


@pytest.fixture(scope="session")
def backend_url(stack):
    """Where Label Studio reaches vllm-batch's ML backend."""
    return stack.base_url.removesuffix("/v1") + "/labelstudio"


@pytest.fixture(scope="session")
def may_push(stack):
    """The e2e API user may have its batches written to Label Studio
    (labeling.change_labelingproject), as an operator grants it in the admin."""
    stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import Permission, User\n"
        "User.objects.get(username='e2e').user_permissions.add("
        "Permission.objects.get(codename='change_labelingproject'))",
    )


@pytest.fixture(scope="session")
def tiny_llama_ready(stack, client):
    """The worker loads tiny-llama for its first batch; /predict works once its heartbeat says so."""
    file = client.files.create(
        file=(
            "warm.jsonl",
            b'{"custom_id": "warm", "method": "POST", "url": "/v1/chat/completions", '
            b'"body": {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}}\n',
        ),
        purpose="batch",
    )
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 300
    while client.batches.retrieve(batch.id).status not in ("completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < deadline, "the warm-up batch did not finish"
        time.sleep(0.5)
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    deadline = time.monotonic() + 60
    while (
        httpx.post(
            f"{stack.base_url}/inference", json={"prompt": "hi", "max_tokens": 1}, headers=headers, timeout=60
        ).status_code
        != 200
    ):
        assert time.monotonic() < deadline, "no worker announced tiny-llama for realtime"
        time.sleep(0.5)


def project_with_backend(ls, backend_url, title, config, tasks):
    """A Label Studio project with tasks and vllm-batch connected as its model."""
    project = ls.create_project(title, config)
    task_ids = ls.import_tasks(project["id"], [{"data": data} for data in tasks])
    assert len(task_ids) == len(tasks)
    backend = ls.connect_ml_backend(project["id"], backend_url, "vllm-batch")
    return project, task_ids, backend
