"""gunicorn for the web process: `gunicorn batchsite.wsgi -c deploy/gunicorn.conf.py`
(make serve, the systemd unit). Flags on the command line or in GUNICORN_CMD_ARGS
override these, e.g. GUNICORN_CMD_ARGS="-b 0.0.0.0:8000 -w 8"."""

import gc
import os
import shutil
import sys
from pathlib import Path

# Each web process writes its realtime latency observations here, and /metrics sums
# them; prometheus_client reads the variable when imported, so it is set before the app loads.
_var_dir = Path(os.environ.get("VLLM_BATCH_VAR_DIR") or Path(__file__).resolve().parent.parent / "var")
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_var_dir / "prometheus"))

bind = "127.0.0.1:8000"
workers = 4
# Threads, because a realtime request (a stream, or one waiting for a model swap)
# holds its thread until the worker answers.
worker_class = "gthread"
threads = 16
# Longer than any client's poll interval and than a proxy's idle timeout towards
# us (nginx keeps upstream connections 60 s): with gunicorn's default of 2 s a
# client polling every 2 s met a connection closed under it ("Connection error").
keepalive = 75
# With gthread this bounds a worker process that stops responding, not a request:
# a realtime request may take up to its own timeout (600 s at most).
timeout = 300
graceful_timeout = 30
backlog = 2048
# Behind a proxy on this host: trust its X-Forwarded-* headers (Django reads
# X-Forwarded-Proto only when VLLM_BATCH_BEHIND_PROXY / VLLM_BATCH_HTTPS is set).
forwarded_allow_ips = "127.0.0.1,::1"


def post_fork(server, worker):
    # A thread that wants the GIL asks the holder to drop it after this long. At
    # Python's 5 ms a request thread waited up to 5 ms at each database round trip
    # while another thread of its process (Label Studio events being applied, a
    # realtime stream) ran Python.
    sys.setswitchinterval(0.0005)


def post_worker_init(worker):
    # The app's ~130,000 objects live as long as the process: out of the garbage
    # collector's sight, its full collections (which every request of the process
    # waits for) take a few ms instead of 110-170 ms on a 2-core machine.
    from django.urls import get_resolver

    _ = get_resolver().url_patterns  # imports every view now, not on the first request
    gc.freeze()


def on_starting(server):
    # Files of an earlier run would add its observations to this one's.
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
