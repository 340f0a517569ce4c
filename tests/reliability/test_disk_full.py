"""A full disk while publishing: nothing half-published, the job completes once space returns."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.emulator import Emulator
from tests.support.factories import Folders, outbox_entries, read_jsonl, write_jsonl
from tests.support.running import REPO, batchd_cmd, run_batchd
from tests.support.tmpfs import tmpfs
from tests.support.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs as the outbox")


@pytest.fixture
def small_outbox(folders: Folders) -> Iterator[Path]:
    with tmpfs(folders.root, "outbox", "64k") as mnt:
        yield mnt


def _grow(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)


def test_once_fails_cleanly_then_publishes(folders: Folders, emulator: Emulator, small_outbox: Path) -> None:
    ids = write_jsonl(folders.inbox / "big.jsonl", 300)
    env = folders.env(emulator.url, BATCHD_OUTBOX=str(small_outbox))
    first = run_batchd(env, "run", "--once")
    assert first.returncode == 1
    assert "No space left" in first.stderr or "cannot publish" in first.stderr
    assert outbox_entries(small_outbox) == []  # no half-published folder, no .partial left behind
    calls = emulator.chat_count
    _grow(small_outbox)
    second = run_batchd(env, "run", "--once")
    assert second.returncode == 0, second.stderr
    assert [r["custom_id"] for r in read_jsonl(small_outbox / "big" / "results.jsonl")] == ids
    assert emulator.chat_count == calls  # nothing was asked again: the results were in the journal


def test_daemon_waits_and_publishes_when_space_returns(
    folders: Folders, emulator: Emulator, small_outbox: Path
) -> None:
    write_jsonl(folders.inbox / "big.jsonl", 300)
    env = folders.env(emulator.url, BATCHD_OUTBOX=str(small_outbox))
    log = folders.root / "daemon.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(batchd_cmd("run"), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=fh)
    try:
        wait_for(lambda: "publish_failed" in log.read_text(), timeout=60)
        assert proc.poll() is None  # still up, waiting for space
        assert not outbox_entries(small_outbox)  # nothing half-published
        _grow(small_outbox)
        wait_for(lambda: (small_outbox / "big" / "metrics.json").exists(), timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert len(read_jsonl(small_outbox / "big" / "results.jsonl")) == 300
    assert [p.name for p in outbox_entries(small_outbox)] == ["big"]
