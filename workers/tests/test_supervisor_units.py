"""The systemd units pass `systemd-analyze verify` and keep the supervision settings."""

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"


def unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNITS / name)
    return parser


def test_the_worker_unit_restarts_always_with_a_start_limit_and_a_watchdog():
    worker = unit("vllm-batch-worker.service")
    service = worker["Service"]
    assert service["Restart"] == "always"
    assert int(service["RestartSec"]) > 0
    assert int(worker["Unit"]["StartLimitBurst"]) == 10
    assert service["Type"] == "notify" and service["NotifyAccess"] == "all"
    # Above 3 heartbeats of 10 s, so one slow beat is not a restart.
    assert int(service["WatchdogSec"]) > 30
    assert service["WatchdogSignal"] == "SIGKILL"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", ["vllm-batch-worker.service", "vllm-batch-web.service"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path, name):
    # verify checks that the programs exist: point the install path at stand-ins.
    root = tmp_path / "opt"
    (root / ".venv" / "bin").mkdir(parents=True)
    for program in ("python", "gunicorn"):
        (root / ".venv" / "bin" / program).symlink_to("/bin/true")
    text = (UNITS / name).read_text().replace("/opt/vllm-batch", str(root))
    (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        # This machine runs no systemd (a container): messages about its own state are not the unit's.
        if name in line or "Unknown key" in line or "Unknown section" in line
    ]
    assert result.returncode == 0 and not problems, result.stderr
