"""Smoke tests of `manage.py worker ...` through call_command; the real cluster is
exercised in tests/e2e/test_worker_control.py."""

import io
import json
from datetime import datetime

import pytest
from django.core.management import CommandError, call_command

from workers.console import logs
from workers.models import WorkerCommand

from .factories import make_worker


def run(*args):
    out = io.StringIO()
    call_command("worker", *args, stdout=out)
    return out.getvalue()


def test_status_exits_1_when_no_worker_is_online(db):
    with pytest.raises(SystemExit) as exit_:
        run("status", "--api-url", "http://127.0.0.1:9/v1")
    assert exit_.value.code == 1


def test_status_json_lists_an_online_worker_and_exits_0(db):
    saved = make_worker(current_model="tiny-llama")
    report = json.loads(run("status", "--json", "--api-url", "http://127.0.0.1:9/v1"))
    assert report["online"] == 1
    [worker] = report["workers"]
    assert (worker["name"], worker["freshness"], worker["model"]) == ("elsewhere:42", "online", "tiny-llama")
    assert datetime.fromisoformat(worker["last_seen"]) == saved.last_seen
    assert report["api"]["answers"] is False


def test_status_text_shows_a_stale_worker_and_exits_1(db):
    make_worker(age=35)
    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("worker", "status", "--api-url", "http://127.0.0.1:9/v1", stdout=out)
    assert "elsewhere:42" in out.getvalue() and "stale" in out.getvalue()


def test_restart_writes_a_command_for_the_worker(db):
    worker = make_worker()
    assert "restart: sent (pending)" in run("restart", "--worker", str(worker.pk))
    assert WorkerCommand.objects.get().action == WorkerCommand.Action.RESTART


def test_kill_needs_yes(db):
    worker = make_worker()
    with pytest.raises(CommandError, match="--yes"):
        run("kill", "--worker", worker.name)
    assert not WorkerCommand.objects.exists()


def test_unknown_worker_is_an_error(db):
    with pytest.raises(CommandError, match="No such worker"):
        run("clear-gpu", "--worker", "nowhere:1")


def test_logs_tail_and_grep(db, settings):
    path = logs.log_path("worker")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"2026-01-01 INFO line {i} {'needle' if i % 10 == 0 else ''}\n" for i in range(100)))
    tail = run("logs", "--tail", "5").splitlines()
    assert [line.split()[3] for line in tail] == ["95", "96", "97", "98", "99"]
    found = run("logs", "--tail", "100", "--grep", "NEEDLE").splitlines()
    assert len(found) == 10 and all("needle" in line for line in found)
