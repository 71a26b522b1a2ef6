import logging
import os
import threading
import time

import pytest

from jobs import leases
from workers import runner
from workers.console import logs


def write_lines(path, lines, mode="w"):
    with open(path, mode) as f:
        f.writelines(f"{line}\n" for line in lines)


def record(level, message):
    return f"2025-01-31 12:00:00,123 {level} [42] [-] workers.runner: {message}"


def test_tail_reads_only_the_end_of_a_big_file(tmp_path, monkeypatch):
    path = tmp_path / "worker.log"
    with open(path, "wb") as f:
        # A sparse gigabyte before the last lines: reading it whole would take seconds and a gigabyte.
        f.seek(1 << 30)
        f.write(b"\n" + b"".join(f"line {i}\n".encode() for i in range(1000)))
    read = []

    class Spy:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, size=-1):
            data = self.f.read(size)
            read.append(len(data))
            return data

    monkeypatch.setattr(logs, "open", lambda *a, **kw: Spy(open(*a, **kw)), raising=False)  # noqa: SIM115

    assert logs.tail(path, 100) == [f"line {i}" for i in range(900, 1000)]
    assert sum(read) <= 2 * logs.BLOCK_SIZE


def test_tail_returns_whole_lines_across_block_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "BLOCK_SIZE", 7)
    path = tmp_path / "worker.log"
    write_lines(path, [f"entry number {i}" for i in range(50)])

    assert logs.tail(path, 3) == ["entry number 47", "entry number 48", "entry number 49"]
    assert logs.tail(path, 500) == [f"entry number {i}" for i in range(50)]


def test_tail_keeps_a_last_line_still_being_written(tmp_path):
    path = tmp_path / "worker.log"
    path.write_text("one\ntwo\nthr")

    assert logs.tail(path, 2) == ["two", "thr"]


def test_tail_of_a_missing_log_is_empty(tmp_path):
    assert logs.tail(tmp_path / "worker.log", 10) == []


def test_tail_continues_into_the_newest_backup_after_a_rotation(tmp_path):
    path = tmp_path / "worker.log"
    write_lines(tmp_path / "worker.log.2", ["too old"])
    write_lines(tmp_path / "worker.log.1", [f"old {i}" for i in range(10)])
    write_lines(path, ["new 0", "new 1"])

    assert logs.tail(path, 5) == ["old 7", "old 8", "old 9", "new 0", "new 1"]
    assert logs.tail(path, 2) == ["new 0", "new 1"]


def test_tail_decodes_broken_utf8_without_failing(tmp_path):
    path = tmp_path / "worker.log"
    path.write_bytes(b"ok\n\xff\xfe bad\n")

    assert logs.tail(path, 2) == ["ok", "\ufffd\ufffd bad"]


def test_grep_is_a_case_insensitive_regex():
    lines = ["Batch batch_1 completed", "batch batch_2 FAILED validation", "worker ready"]

    assert list(logs.grep(lines, "failed")) == ["batch batch_2 FAILED validation"]
    assert list(logs.grep(lines, r"batch_\d complete")) == ["Batch batch_1 completed"]


def test_grep_matches_an_invalid_regex_as_plain_text():
    lines = ["value [unclosed here", "other"]

    assert list(logs.grep(lines, "[unclosed")) == ["value [unclosed here"]


def test_levels_carry_a_record_level_onto_its_traceback_lines():
    lines = [
        "Traceback (most recent call last):",
        record("INFO", "starting"),
        record("ERROR", "batch failed"),
        "Traceback (most recent call last):",
        '  File "x.py", line 1',
        record("DEBUG", "details"),
    ]

    assert logs.levels(lines) == [None, "INFO", "ERROR", "ERROR", "ERROR", "DEBUG"]


def test_counts_count_records_not_traceback_lines():
    lines = [
        record("ERROR", "boom"),
        "Traceback (most recent call last):",
        "ValueError: WARNING is just a word here",
        record("CRITICAL", "worse"),
        record("WARNING", "careful"),
        record("INFO", "an ERROR in the message is no error"),
    ]

    assert logs.counts(lines) == {"errors": 2, "warnings": 1}
    assert logs.level_of(lines[0]) == "ERROR"
    assert logs.level_of(lines[1]) is None


@pytest.fixture
def opened(monkeypatch):
    """Set once follow() has opened the log: lines written after that are new to it."""
    event = threading.Event()
    real_open = logs._open

    def open_and_tell(path, at_end):
        found = real_open(path, at_end)
        event.set()
        return found

    monkeypatch.setattr(logs, "_open", open_and_tell)
    return event


def test_follow_yields_appended_lines_through_a_rotation(tmp_path, opened):
    path = tmp_path / "worker.log"
    write_lines(path, ["before following"])
    second_seen = threading.Event()

    def writer():
        opened.wait(5)
        write_lines(path, ["first", "second"], mode="a")
        second_seen.wait(5)
        with open(path, "a") as f:
            f.write("last before rotation\n")
        path.rename(tmp_path / "worker.log.1")
        write_lines(path, ["after rotation"])

    thread = threading.Thread(target=writer)
    thread.start()
    seen = []
    for line in logs.follow(path, timeout=10, poll=0.05):
        seen.append(line)
        if line == "second":
            second_seen.set()
        if line == "after rotation":
            break
    thread.join()

    assert seen == ["first", "second", "last before rotation", "after rotation"]


def test_follow_reads_a_truncated_log_from_its_start(tmp_path, opened):
    path = tmp_path / "worker.log"
    write_lines(path, ["a long line that makes the file bigger"])

    def writer():
        opened.wait(5)
        write_lines(path, ["short"])

    thread = threading.Thread(target=writer)
    thread.start()
    seen = next(iter(logs.follow(path, timeout=10, poll=0.05)))
    thread.join()

    assert seen == "short"


def test_follow_stops_when_asked(tmp_path):
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()

    assert list(logs.follow(tmp_path / "missing.log", stop_event=stop, poll=5)) == []
    assert time.monotonic() - started < 3


def test_follow_stops_after_its_timeout(tmp_path):
    path = tmp_path / "worker.log"
    path.touch()
    started = time.monotonic()

    assert list(logs.follow(path, timeout=0.3, poll=0.05)) == []
    assert time.monotonic() - started < 3


def test_log_path_only_knows_the_two_logs(settings, tmp_path):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "LOG_DIR": tmp_path}

    assert logs.log_path() == tmp_path / "worker.log"
    assert logs.log_path("web") == tmp_path / "web.log"
    with pytest.raises(ValueError):
        logs.log_path("../secret_key")


def test_cluster_processes_write_worker_log_and_others_web_log(settings, tmp_path, monkeypatch):
    settings.VLLM_BATCH = {**settings.VLLM_BATCH, "LOG_DIR": tmp_path / "logs"}
    monkeypatch.setattr("sys.argv", ["manage.py", "qcluster"])
    handler = logs.file_handler()
    handler.close()
    monkeypatch.setattr("sys.argv", ["gunicorn", "batchsite.wsgi"])
    other = logs.file_handler()
    other.close()

    assert handler.baseFilename == str(tmp_path / "logs" / "worker.log")
    assert other.baseFilename == str(tmp_path / "logs" / "web.log")


def test_test_settings_keep_logs_out_of_the_repository(settings):
    assert str(settings.VLLM_BATCH["LOG_DIR"]).startswith(str(settings.VLLM_BATCH["VAR_DIR"]))
    assert "vllm-batch-test-" in str(settings.VLLM_BATCH["LOG_DIR"])


def capture_lines():
    stream = []
    handler = logging.Handler()
    handler.addFilter(logs.BatchIdFilter())
    handler.setFormatter(logging.Formatter("[%(batch_id)s] %(message)s"))
    handler.emit = lambda record: stream.append(handler.format(record))
    return handler, stream


def test_records_carry_the_batch_id_while_a_batch_runs():
    handler, lines = capture_lines()
    logger = logging.getLogger("workers.tests.batch_id")
    logger.addHandler(handler)
    try:
        logger.warning("outside")
        with logs.batch_context("batch_abc"):
            logger.warning("inside")
        logger.warning("after")
    finally:
        logger.removeHandler(handler)

    assert lines == ["[-] outside", "[batch_abc] inside", "[-] after"]


def test_process_batch_runs_in_its_batch_context(monkeypatch):
    seen = []
    monkeypatch.setattr(runner, "close_old_connections", lambda: None)
    monkeypatch.setattr(leases, "claim", lambda batch_id, holder: seen.append(logs.current_batch.get()))

    assert runner.process_batch("batch_xyz", holder="host:1") == "skipped"
    assert seen == ["batch_xyz"]
    assert logs.current_batch.get() is None


def test_the_line_format_is_what_level_detection_expects(settings):
    formatter = logging.Formatter(settings.LOGGING["formatters"]["line"]["format"])
    entry = logging.LogRecord("workers.runner", logging.WARNING, __file__, 1, "careful", None, None)
    entry.batch_id = "batch_1"
    line = formatter.format(entry)

    assert logs.level_of(line) == "WARNING"
    assert f"[{os.getpid()}] [batch_1] workers.runner: careful" in line


def test_grep_of_one_line_is_falsy_when_it_does_not_match():
    assert not logs.grep(["worker ready"], "error")
    assert logs.grep(["an ERROR here"], "error") == ["an ERROR here"]
