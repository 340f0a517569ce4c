"""The journal on a full (or read-only) filesystem: every failure is a ``StorageError`` that says
which (full or unwritable) and where, never a raw sqlite3 error (a failed ROLLBACK after SQLite had
already rolled back used to escape as one), and the journal works again once space returns."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchd.errors import StorageError
from batchd.journal import Journal, Outcome, ReqState
from tests.support.tmpfs import tmpfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path, "fs", "16m") as mnt:
        yield mnt


def _outcomes(n: int, start: int = 1) -> list[Outcome]:
    big = {"text": "x" * 500}
    return [Outcome(seq=s, state=ReqState.DONE, attempts=1, result=big) for s in range(start, start + n)]


def test_a_full_disk_is_a_storage_error_and_the_journal_recovers(small: Path) -> None:
    journal = Journal(small / "journal.sqlite3")
    with journal.transaction() as db:  # a job and its rows, as ingest leaves them (plain SQL: staging only)
        db.execute(
            "INSERT INTO jobs (id, seq, input_name, stem, kind, state, total, created_at) "
            "VALUES ('j', 1, 'a', 'a', 'jsonl', 'running', 2000, 0)"
        )
        db.executemany(
            "INSERT INTO requests (job_id, seq, line, state) VALUES ('j', ?, ?, 'running')",
            [(s, s) for s in range(1, 2001)],
        )
    subprocess.run(["dd", "if=/dev/zero", f"of={small / 'filler'}", "bs=64k"], check=False, capture_output=True)
    with pytest.raises(StorageError) as raised:
        for start in range(1, 2001, 100):
            journal.record("j", _outcomes(100, start))
    assert raised.value.full and raised.value.path == str(small / "journal.sqlite3")
    assert "disk is full" in raised.value.reason
    (small / "filler").unlink()
    for start in range(1, 2001, 100):
        journal.record("j", _outcomes(100, start))
    assert journal.counts("j").get("done") == 2000
    assert journal.integrity_check() == "ok"
