"""Storage faults without root: a ``Journal`` whose writes fail like a full (or unwritable) disk while
the test says so (the runner's and the daemon's tests, the property suite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchd.errors import StorageError
from batchd.journal import Journal

#: the journal's methods that write (each one transaction): these fail while the fault is on
WRITES = frozenset(
    {
        "record",
        "take_pending",
        "update_job",
        "add_sample",
        "requeue",
        "start_run",
        "end_run",
        "published",
        "claim",
        "create_job",
        "finish_ingest",
        "insert_requests",
    }
)


class FaultyJournal(Journal):
    """A real journal; while ``fault`` is set every write raises the ``StorageError`` a full disk
    gives (nothing is written: SQLite rolls the transaction back). ``fails`` counts the refusals."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fault: str | None = None  # "full" or "eio"
        self.fails = 0
        #: a countdown: the fault switches on by itself after this many more writes (None: never)
        self.fault_after: int | None = None
        self.arm = "full"

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in WRITES:
            return _guarded(self, name, attr)
        return attr


def _guarded(journal: FaultyJournal, name: str, method: Any) -> Any:
    def call(*args: Any, **kw: Any) -> Any:
        if journal.fault_after is not None:
            if journal.fault_after <= 0:
                journal.fault, journal.fault_after = journal.arm, None
            else:
                journal.fault_after -= 1
        if journal.fault is not None:
            journal.fails += 1
            raise refusal(journal.path, journal.fault, what=name)
        return method(*args, **kw)

    return call


def refusal(path: Path, kind: str, *, what: str = "write") -> StorageError:
    """The ``StorageError`` the journal's connection raises for a full disk or an I/O error."""
    if kind == "full":
        return StorageError(
            f"journal {what} failed: database or disk is full",
            path=str(path),
            full=True,
            reason="database or disk is full",
        )
    return StorageError(f"journal {what} failed: disk I/O error", path=str(path), full=False, reason="disk I/O error")
