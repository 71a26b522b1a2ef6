"""The log files: where they are, the handler that writes them, and reading them back.

Every process writes through Django's LOGGING (batchsite/settings.py): the cluster's
processes to worker.log, the web server and commands to web.log, each rotated by size.
The `worker logs` command and the admin log viewer read them with the functions here.
"""

import contextvars
import logging
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from concurrent_log_handler import ConcurrentRotatingFileHandler
from django.conf import settings

LOG_NAMES = ("worker", "web")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The start of a record as the "line" formatter writes it: "2025-01-31 12:00:00,123 INFO ...".
# Other lines (tracebacks, multi-line messages) continue the record above them.
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) ")
BLOCK_SIZE = 64 * 1024

current_batch = contextvars.ContextVar("current_batch", default=None)


@contextmanager
def batch_context(batch_id):
    """Records logged inside the block carry this batch id."""
    token = current_batch.set(batch_id)
    try:
        yield
    finally:
        current_batch.reset(token)


class BatchIdFilter(logging.Filter):
    """Gives every record a batch_id for the formatter: the running batch's, or '-'."""

    def filter(self, record):
        record.batch_id = getattr(record, "batch_id", None) or current_batch.get() or "-"
        return True


def process_log_name():
    return "worker" if "qcluster" in sys.argv else "web"


def log_path(name="worker"):
    if name not in LOG_NAMES:
        raise ValueError(f"unknown log {name!r}; choose one of {', '.join(LOG_NAMES)}")
    return Path(settings.VLLM_BATCH["LOG_DIR"]) / f"{name}.log"


def file_handler(name=None):
    """The rotating file handler LOGGING installs; settings are read when logging is
    configured, so the test settings' temporary log directory applies."""
    # Several processes append to one file (the cluster's main, sentinel, workers and
    # monitor; gunicorn's workers): the stdlib handler would let each rotate on its own
    # and lose records, this one takes a lock file around every write and rollover.
    path = log_path(name or process_log_name())
    path.parent.mkdir(parents=True, exist_ok=True)
    return ConcurrentRotatingFileHandler(
        str(path),
        maxBytes=settings.VLLM_BATCH["LOG_MAX_BYTES"],
        backupCount=settings.VLLM_BATCH["LOG_BACKUPS"],
        encoding="utf-8",
    )


# -- reading ------------------------------------------------------------------


def _decode(raw):
    return raw.decode("utf-8", errors="replace").rstrip("\r")


def _tail_file(path, lines):
    """The last `lines` lines of one file, read backwards in blocks from its end."""
    if lines <= 0:
        return []
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return []
    with f:
        position = f.seek(0, os.SEEK_END)
        blocks = []
        newlines = 0
        # One newline more than lines, so the first line kept is whole.
        while position > 0 and newlines <= lines:
            step = min(BLOCK_SIZE, position)
            position -= step
            f.seek(position)
            block = f.read(step)
            blocks.append(block)
            newlines += block.count(b"\n")
    data = b"".join(reversed(blocks))
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    return [_decode(part) for part in parts[-lines:]]


def tail(path, lines):
    """The last `lines` lines of the log at `path`, continuing into its newest
    backup (worker.log.1) when the file was rotated recently."""
    path = Path(path)
    found = _tail_file(path, lines)
    if len(found) < lines:
        found = _tail_file(path.with_name(path.name + ".1"), lines - len(found)) + found
    return found


def compile_pattern(pattern):
    """A case-insensitive regex; a pattern that is not a valid regex is matched as plain text."""
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error:
        return re.compile(re.escape(pattern), re.IGNORECASE)


def grep(lines, pattern):
    """The lines that match `pattern` (see compile_pattern), as a list. To filter
    follow(), test each line with compile_pattern(pattern).search(line)."""
    regex = compile_pattern(pattern)
    return [line for line in lines if regex.search(line)]


def _open(path, at_end):
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return None, None
    if at_end:
        f.seek(0, os.SEEK_END)
    return f, os.fstat(f.fileno()).st_ino


def follow(path, stop_event=None, timeout=None, poll=0.5):
    """Yields the lines appended to the log from now on, as `tail -F` does, until
    stop_event is set or timeout seconds pass. Survives rotation: it reads the old
    file to its end, then the new one from its start."""
    path = Path(path)
    stop_event = stop_event or threading.Event()
    deadline = None if timeout is None else time.monotonic() + timeout
    f, inode = _open(path, at_end=True)
    pending = b""
    try:
        while not stop_event.is_set() and (deadline is None or time.monotonic() < deadline):
            chunk = f.read(BLOCK_SIZE) if f else b""
            if chunk:
                *complete, pending = (pending + chunk).split(b"\n")
                for raw in complete:
                    yield _decode(raw)
                continue
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                stat = None  # between the rename and the next write of a rollover
            if stat is not None and (f is None or stat.st_ino != inode or stat.st_size < f.tell()):
                if f is not None:
                    # Another process may have written to the old file just before it rotated.
                    rest = pending + f.read()
                    f.close()
                    for raw in rest.split(b"\n"):
                        if raw:
                            yield _decode(raw)
                pending = b""
                f, inode = _open(path, at_end=False)
                continue
            wait = poll if deadline is None else min(poll, max(0.0, deadline - time.monotonic()))
            stop_event.wait(wait)
    finally:
        if f is not None:
            f.close()


def level_of(line):
    """The level of the record this line starts, or None for a continuation line."""
    match = RECORD_START.match(line)
    if match and match["level"] in LEVELS:
        return match["level"]
    return None


def levels(lines):
    """The level of each line; continuation lines (tracebacks) take their record's level."""
    result = []
    current = None
    for line in lines:
        if RECORD_START.match(line):
            current = level_of(line)
        result.append(current)
    return result


def counts(lines):
    """How many records among the lines are errors (ERROR, CRITICAL) and warnings."""
    found = [level_of(line) for line in lines]
    return {
        "errors": sum(1 for level in found if level in ("ERROR", "CRITICAL")),
        "warnings": sum(1 for level in found if level == "WARNING"),
    }
