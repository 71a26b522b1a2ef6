"""The writers' turns beside an SQLite database (batchsite.sqlite_turns)."""

import os
import threading
import time
import types

import pytest

from batchsite import sqlite_turns


@pytest.fixture
def database(tmp_path, monkeypatch):
    fake = types.SimpleNamespace(
        vendor="sqlite",
        is_in_memory_db=lambda: False,
        in_atomic_block=False,
        settings_dict={"NAME": str(tmp_path / "db.sqlite3")},
    )
    monkeypatch.setattr(sqlite_turns, "connection", fake)
    return fake


def hold(exclusive, holding, release):
    with sqlite_turns.write_turn(exclusive=exclusive):
        holding.set()
        release.wait(timeout=10)


def test_a_shared_turn_waits_for_the_exclusive_one_and_goes_as_soon_as_it_ends(database):
    holding, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=hold, args=(True, holding, release))
    thread.start()
    assert holding.wait(timeout=10)
    released_at = []
    threading.Timer(0.3, lambda: (released_at.append(time.monotonic()), release.set())).start()
    with sqlite_turns.write_turn(exclusive=False):
        got_at = time.monotonic()
    thread.join(timeout=10)
    assert released_at and 0 <= got_at - released_at[0] < 0.25


def test_an_exclusive_turn_waits_for_shared_ones(database):
    holding, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=hold, args=(False, holding, release))
    thread.start()
    assert holding.wait(timeout=10)
    order = []
    threading.Timer(0.2, lambda: (order.append("shared ended"), release.set())).start()
    with sqlite_turns.write_turn(exclusive=True):
        order.append("exclusive")
    thread.join(timeout=10)
    assert order == ["shared ended", "exclusive"]


def test_a_turn_is_bounded(tmp_path):
    path = sqlite_turns.lock_path(str(tmp_path / "db.sqlite3"))
    holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    waiter = os.open(path, os.O_RDWR)
    try:
        assert sqlite_turns.acquire(holder, exclusive=True)
        started = time.monotonic()
        assert not sqlite_turns.acquire(waiter, exclusive=False, limit=0.1)
        assert time.monotonic() - started < 5
    finally:
        os.close(waiter)
        os.close(holder)


def test_no_turn_inside_a_transaction_or_off_sqlite(database, tmp_path):
    database.in_atomic_block = True
    with sqlite_turns.write_turn(exclusive=True):
        pass
    database.in_atomic_block = False
    database.vendor = "postgresql"
    with sqlite_turns.write_turn(exclusive=True):
        pass
    assert not os.path.exists(sqlite_turns.lock_path(str(tmp_path / "db.sqlite3")))
