"""tests/support/realserver: finding the cached llama-server, waiting for a build in progress, the skip reasons."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import tests.support.realserver as rs


@pytest.fixture
def build_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "llama-server-9.9.9"
    monkeypatch.setattr(rs, "_build_dir", lambda: where)
    monkeypatch.delenv("BATCHD_LLAMA_SERVER", raising=False)
    return where


def hold_lock(lock: Path, then_binary: Path | None, seconds: float) -> subprocess.Popen[bytes]:
    """A stand-in build: holds the flock, writes the binary (if any) and lets go after ``seconds``."""
    code = (
        "import fcntl, os, sys, time\n"
        f"fh = open({str(lock)!r}, 'a'); fcntl.flock(fh, fcntl.LOCK_EX); print('locked', flush=True)\n"
        f"time.sleep({seconds})\n"
        + (
            f"os.makedirs({str(then_binary.parent)!r}, exist_ok=True); open({str(then_binary)!r}, 'w').close()\n"
            if then_binary
            else ""
        )
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
    return proc


def test_nothing_built_says_how_to_build(build_dir: Path) -> None:
    assert "make llama-server" in str(rs.llama_server_binary(wait=0))


def test_an_impossible_build_is_quoted(build_dir: Path) -> None:
    Path(f"{build_dir}.unavailable").write_text("no 'cmake' on PATH\n")
    assert rs.llama_server_binary(wait=0) == "llama-server cannot be built here: no 'cmake' on PATH"


def test_a_failed_build_shows_its_log_tail(build_dir: Path) -> None:
    Path(f"{build_dir}.log").write_text("[ 50%] Building\nerror: out of memory\nmake: *** Error 1\n")
    reason = str(rs.llama_server_binary(wait=0))
    assert reason.startswith("the llama-server build failed") and "out of memory" in reason


def test_a_build_in_progress_is_waited_for(build_dir: Path) -> None:
    builder = hold_lock(Path(f"{build_dir}.lock"), build_dir / "llama-server", 1.0)
    try:
        started = time.monotonic()
        assert rs.llama_server_binary(wait=60) == build_dir / "llama-server"
        assert time.monotonic() - started < 30
    finally:
        builder.wait(timeout=30)


def test_a_build_past_the_deadline_is_a_skip_reason(build_dir: Path) -> None:
    builder = hold_lock(Path(f"{build_dir}.lock"), None, 30.0)
    try:
        assert "still running after 1 s" in str(rs.llama_server_binary(wait=1))
    finally:
        builder.kill()
        builder.wait()


def test_the_build_script_says_why_it_cannot_build(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\nexit 1\n")  # an interpreter without llama-cpp-python
    fake_python.chmod(0o755)
    done = subprocess.run(
        ["bash", str(rs.BUILD_SCRIPT), str(fake_python)],
        check=False,
        capture_output=True,
        text=True,
        env={"BATCHD_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert done.returncode == 3
    assert "llama-cpp-python is not installed" in (tmp_path / "cache" / "llama-server.unavailable").read_text()
