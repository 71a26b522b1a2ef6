"""SQLite only: turns for the writers that matter, through a file lock beside the database.

SQLite's own lock is not fair: a writer that finds it taken sleeps and polls, up
to 100 ms a time (the busy handler's back-off), so a short INSERT that arrives
while the worker commits a chunk of results, or while the web applies a Label
Studio event, can wait far longer than the commit it waits for. Those writers
take turns here instead, and a waiting writer gets its turn within a millisecond
of the lock's release: the short writes that must answer fast (a Label Studio
webhook: 1 s, no retry) share a turn (LOCK_SH), the long ones take it alone
(LOCK_EX).

A turn is bounded: a writer that waited `WAIT_LIMIT` seconds goes on without one,
and SQLite's lock still keeps the writes apart. Not inside a transaction: it may
hold SQLite's lock already, and a writer waiting for the turn would wait for it.
"""

import fcntl
import os
import time
from contextlib import contextmanager

from django.db import connection

WAIT_LIMIT = 2.0
POLL = 0.001


def lock_path(database_name):
    return f"{database_name}-writers.lock"


def acquire(fd, *, exclusive, limit=WAIT_LIMIT):
    """Takes the lock on `fd`, polling every millisecond (flock itself has no
    timeout); returns False when `limit` seconds passed without it."""
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + limit
    while True:
        try:
            fcntl.flock(fd, mode)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)


@contextmanager
def write_turn(*, exclusive):
    """A turn to write on the default database when it is an SQLite file, outside
    any transaction; nothing otherwise."""
    if connection.vendor != "sqlite" or connection.is_in_memory_db() or connection.in_atomic_block:
        yield
        return
    fd = os.open(lock_path(connection.settings_dict["NAME"]), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        acquire(fd, exclusive=exclusive)
        yield
    finally:
        os.close(fd)  # releases the lock
