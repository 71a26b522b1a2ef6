"""Starts and stops a whole vllm-batch on this machine: web server and worker cluster.

Used by the demo, the end-to-end tests and the benchmarks, so all run what a user
runs: `manage.py migrate`, gunicorn, `manage.py qcluster`, with the product's
settings plus devtools' commands (devtools/settings.py). Every wait here is bounded.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from workers.processes import kill_all

PROJECT_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# A stack keeps its state in its own var dir: where the caller's environment
# points the product's database, broker, files or logs elsewhere, it is not passed on.
OWN_STATE = ("DATABASE_URL", "REDIS_URL", "VLLM_BATCH_FILES_ROOT", "VLLM_BATCH_LOG_DIR")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_tree(proc, timeout=60.0, sig=signal.SIGTERM):
    """Signals the process (and, once the timeout passes, kills its whole tree).
    Returns the seconds it took to exit."""
    started = time.monotonic()
    if proc is None or proc.poll() is not None:
        return 0.0
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all(tree, timeout=0)
        proc.wait(timeout=30)
    psutil.wait_procs([p for p in tree if p.pid != proc.pid], timeout=30)
    return time.monotonic() - started


class Stack:
    def __init__(self, var_dir, env=None, port=None, log_prefix=""):
        self.var_dir = Path(var_dir)
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.env = {
            **{name: value for name, value in os.environ.items() if name not in OWN_STATE},
            "VLLM_BATCH_VAR_DIR": str(self.var_dir),
            "DJANGO_SETTINGS_MODULE": "devtools.settings",
        }
        self.env.update(env or {})
        self.web = None
        self.worker = None
        self.log_prefix = log_prefix
        self.logs = []

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def manage(self, *args, timeout=600):
        result = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=PROJECT_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def setup(self, tiny_path=None):
        self.manage("migrate", "--noinput", "-v", "0")
        args = ["register_default_models"]
        if tiny_path:
            args += ["--tiny-path", str(tiny_path)]
        self.manage(*args)

    def idle_workers_holding(self, model):
        """How many workers online (of any cluster on this database) are idle with `model` loaded."""
        code = (
            "from workers.selectors import idle_workers\n"
            f"print(sum(w.current_model == {model!r} for w in idle_workers()))"
        )
        return int(self.manage("shell", "-c", code).split()[-1])

    def warm(self, client, workers, model="tiny-llama", rounds=6):
        """Runs small batches, `workers` at a time, until that many idle workers hold
        `model`: a worker loads its model with its first batch, and one that loads
        it while a large batch runs joins that batch late. Bounded: `rounds` rounds
        of batches of at most 600 s each."""
        for round_ in range(rounds):
            batches = []
            for i in range(workers):
                line = {
                    "custom_id": f"warm-{round_}-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": model, "messages": [{"role": "user", "content": "warm"}], "max_tokens": 4},
                }
                file = client.files.create(file=("warm.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
                batches.append(
                    client.batches.create(
                        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
                    )
                )
            for batch in batches:
                deadline = time.monotonic() + 600
                while client.batches.retrieve(batch.id).status not in ("completed", "failed", "cancelled", "expired"):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"warm-up batch {batch.id} did not finish in 600 s")
                    time.sleep(0.5)
            deadline = time.monotonic() + 10  # heartbeats report the loaded model
            while True:
                if self.idle_workers_holding(model) >= workers:
                    return round_ + 1
                if time.monotonic() > deadline:
                    break
                time.sleep(1)
        raise RuntimeError(f"{model} is not loaded on {workers} idle workers after {rounds} rounds")

    def create_api_key(self, name):
        return self.manage("create_api_key", name, "--quiet").strip()

    def create_staff_user(self, username="admin", password="admin-password-123"):
        env = {**self.env, "DJANGO_SUPERUSER_PASSWORD": password}
        subprocess.run(
            [PYTHON, "manage.py", "createsuperuser", "--noinput", "--username", username, "--email", "a@example.com"],
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            timeout=120,
        )
        return username, password

    @property
    def admin_url(self):
        return f"http://127.0.0.1:{self.port}/admin/"

    def _spawn(self, name, args, env=None):
        log = open(self.var_dir / f"{self.log_prefix}{name}.log", "ab")  # noqa: SIM115
        self.logs.append(log)
        return subprocess.Popen(
            args, cwd=PROJECT_DIR, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def start_web(self, workers=2, threads=8, args=()):
        """gunicorn with deploy/gunicorn.conf.py (keep-alive, backlog, timeouts) as
        `make serve` runs it, on this stack's port; `args` override the file."""
        # The web processes share their realtime latency histogram through
        # prometheus_client's multiprocess files. One directory per stack: a
        # second web on the same var dir must not wipe it.
        metrics_dir = self.var_dir / f"{self.log_prefix}prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir()
        self.web = self._spawn(
            "web",
            [
                PYTHON,
                "-m",
                "gunicorn",
                "batchsite.wsgi",
                "-c",
                str(PROJECT_DIR / "deploy" / "gunicorn.conf.py"),
                "-b",
                f"127.0.0.1:{self.port}",
                "-w",
                str(workers),
                "--threads",
                str(threads),
                *args,
            ],
            env={**self.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.web.poll() is not None:
                raise RuntimeError(f"web server exited with {self.web.returncode}; see {self.var_dir}")
            try:
                urllib.request.urlopen(f"{self.base_url}/openapi.json", timeout=2).close()
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise RuntimeError("web server did not answer within 60 s")

    def start_worker(self, nice=0):
        """`manage.py qcluster`; `nice` > 0 starts it (and so vLLM's engine processes) at that CPU niceness."""
        prefix = ["nice", "-n", str(nice)] if nice else []
        self.worker = self._spawn("worker", [*prefix, PYTHON, "manage.py", "qcluster"])
        return self.worker

    def start_watchdog(self, *args):
        """`manage.py watchdog` in place of the bare cluster: it starts the cluster and restarts it."""
        self.worker = self._spawn("worker", [PYTHON, "manage.py", "watchdog", *args])
        return self.worker

    def cluster_processes(self):
        """Under the watchdog: the cluster it runs now (every process of its session), without the watchdog."""
        if self.worker is None or self.worker.poll() is not None:
            return []
        found = []
        for child in psutil.Process(self.worker.pid).children():
            for process in psutil.process_iter():
                try:
                    if os.getsid(process.pid) == child.pid:
                        found.append(process)
                except (OSError, psutil.Error):
                    continue
        return found

    def worker_processes(self):
        """The cluster's processes: main, sentinel, workers, and vLLM's engine processes."""
        if self.worker is None or self.worker.poll() is not None:
            return []
        main = psutil.Process(self.worker.pid)
        return [main, *main.children(recursive=True)]

    def stop_worker(self, timeout=120.0):
        seconds = stop_process_tree(self.worker, timeout=timeout)
        self.worker = None
        return seconds

    def kill_worker(self):
        """kill -9 of every process of the cluster, as a power cut or OOM killer would."""
        kill_all(self.worker_processes(), timeout=30)
        self.worker.wait(timeout=30)
        self.worker = None

    def stop(self):
        self.stop_worker()
        stop_process_tree(self.web, timeout=30)
        self.web = None
        for log in self.logs:
            log.close()
        self.logs = []
