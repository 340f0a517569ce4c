"""packaging/batchd.service: exposure score and a clean `systemd-analyze verify`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
UNIT = PACKAGING / "batchd.service"
MAX_EXPOSURE = 2.0
OVERALL = re.compile(r"Overall exposure level for \S+:\s*(\d+(?:\.\d+)?)")
# Lines `verify` prints for directives systemd does not know or cannot parse.
BAD_DIRECTIVE = re.compile(r"Unknown (key|section|lvalue)|Failed to parse|Invalid|ignoring", re.I)

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def _offline_supported() -> bool:
    # --offline arrived in systemd 250; Debian 12 has 252.
    r = subprocess.run(["systemd-analyze", "--help"], capture_output=True, text=True)
    return "--offline" in r.stdout


def exposure(unit: Path) -> tuple[float, str]:
    """Overall exposure (0 = locked down, 10 = unprotected) and the full report."""
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = r.stdout + r.stderr
    match = OVERALL.search(report)
    assert match, f"no overall exposure in the output (rc={r.returncode}):\n{report}"
    return float(match.group(1)), report


def test_exposure_is_at_most_2() -> None:
    if not _offline_supported():
        pytest.skip("systemd-analyze lacks --offline (systemd < 250)")
    score, report = exposure(UNIT)
    assert score <= MAX_EXPOSURE, report


def test_verify_reports_no_bad_directives(tmp_path: Path) -> None:
    # ExecStart's venv does not exist here; point a copy at a binary that does, so
    # anything verify still says is about the unit itself.
    text = UNIT.read_text()
    assert re.search(r"^ExecStart=/opt/batchd/venv/bin/batchd run$", text, re.M)
    copy = tmp_path / "batchd.service"
    copy.write_text(re.sub(r"^ExecStart=.*$", "ExecStart=/bin/true run", text, flags=re.M))
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = r.stdout + r.stderr
    bad = [line for line in output.splitlines() if BAD_DIRECTIVE.search(line)]
    assert not bad, output
    assert r.returncode == 0, output


def test_unit_contract() -> None:
    """The settings other parts of batchd rely on (DESIGN.md "Systemd facts")."""
    text = UNIT.read_text()
    wanted = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "WatchdogSec": "120",
        "TimeoutStopSec": "45",
        "StateDirectory": "batchd",
        "User": "batchd",
        "SupplementaryGroups": "batchd-users",
        "UMask": "0027",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/srv/batchd",
        "Environment": "BATCHD_STATE_DIR=%S/batchd",
    }
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    for key, value in wanted.items():
        assert value in settings.get(key, []), f"{key}={value} missing from {UNIT.name}"
    assert "DynamicUser" not in settings
