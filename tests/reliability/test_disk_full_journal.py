"""A full disk under the journal mid-job (issue [18]): the daemon stays up, says why it waits, and
finishes every request exactly once when the space returns; ``--once`` exits 1 with the reason and
the next run finishes the job."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.support.emulator import Emulator
from tests.support.factories import Folders, read_jsonl, write_jsonl
from tests.support.running import REPO, batchd_cmd, run_batchd
from tests.support.tmpfs import tmpfs
from tests.support.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs as the state dir")

N = 1500


@pytest.fixture
def small_state(folders: Folders) -> Iterator[Path]:
    with tmpfs(folders.root, "state", "32m") as mnt:
        yield mnt


def _fill(mnt: Path) -> None:
    """Every free byte taken (dd stops at ENOSPC, as an operator's filler does)."""
    subprocess.run(["dd", "if=/dev/zero", f"of={mnt / 'filler'}", "bs=64k"], check=False, capture_output=True)


def _free(mnt: Path) -> None:
    (mnt / "filler").unlink()


def _events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out


def _storage_shown(outbox: Path) -> list[dict[str, object]]:
    try:
        data = orjson.loads((outbox / "!status.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return []
    return list(data.get("waiting_for_storage") or [])


def _named(log: Path, event: str) -> list[dict[str, object]]:
    return [e for e in _events(log) if e.get("event") == event]


def test_daemon_waits_for_the_journal_and_finishes_once_space_returns(
    folders: Folders, emulator: Emulator, small_state: Path
) -> None:
    emulator.latency = 0.004
    ids = write_jsonl(folders.inbox / "big.jsonl", N)
    env = folders.env(emulator.url, BATCHD_STATE_DIR=str(small_state), BATCHD_BACKEND__LANES="4")
    log = folders.root / "daemon.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(batchd_cmd("run"), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=fh)
    try:
        wait_for(lambda: emulator.chat_count >= 300, timeout=60)
        _fill(small_state)
        blocked = wait_for(lambda: _named(log, "storage_blocked"), timeout=30, describe=lambda: log.read_text()[-3000:])
        assert "journal" in str(blocked[0].get("store")) or "journal" in str(blocked[0])
        assert proc.poll() is None  # still up, waiting for space
        shown = wait_for(lambda: _storage_shown(folders.outbox), timeout=10)
        assert shown[0]["store"] == "journal" and shown[0]["full"] is True
        assert shown[0]["text"].startswith(f"waiting for disk space on {small_state / 'journal.sqlite3'} since ")
        said = run_batchd(env, "status", timeout=60)
        assert said.stdout.startswith(f"batchd: {shown[0]['text']}"), said.stdout + said.stderr
        asked = emulator.chat_count
        wait_for(lambda: len(_named(log, "storage_blocked")) == 1, timeout=5)
        _free(small_state)
        wait_for(
            lambda: (folders.outbox / "big" / "metrics.json").exists(),
            timeout=60,
            describe=lambda: log.read_text()[-3000:],
        )
        assert len(_named(log, "storage_recovered")) == 1
        assert len(_named(log, "storage_blocked")) == 1
        assert emulator.chat_count >= asked
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode == 0
    rows = read_jsonl(folders.outbox / "big" / "results.jsonl")
    assert [r["custom_id"] for r in rows] == ids  # every request exactly once, in input order


def test_once_exits_1_with_the_reason_and_the_next_run_finishes(
    folders: Folders, emulator: Emulator, small_state: Path
) -> None:
    emulator.latency = 0.004
    ids = write_jsonl(folders.inbox / "big.jsonl", N)
    env = folders.env(emulator.url, BATCHD_STATE_DIR=str(small_state), BATCHD_BACKEND__LANES="4")
    log = folders.root / "once.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(batchd_cmd("run", "--once"), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=fh)
    try:
        wait_for(lambda: emulator.chat_count >= 300, timeout=60)
        _fill(small_state)
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "disk space" in text or "journal unwritable" in text, text[-3000:]
    _free(small_state)
    second = run_batchd(env, "run", "--once")
    assert second.returncode == 0, second.stderr[-3000:]
    rows = read_jsonl(folders.outbox / "big" / "results.jsonl")
    assert [r["custom_id"] for r in rows] == ids
