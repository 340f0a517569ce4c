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


# -- the property suite's injector ---------------------------------------------------------------------

#: the journal writes of each phase of a job's life (``update_job`` with ``outbox_name`` is the publish's)
PHASE_WRITES: dict[str, frozenset[str]] = {
    "claim": frozenset({"claim", "add_file", "create_job", "reject_file", "mark_file_removed"}),
    "ingest": frozenset({"claim_work", "restart_ingest", "insert_requests", "fail_ingest", "finish_ingest"}),
    "running": frozenset({"start_run", "take_pending", "record", "requeue", "add_sample", "update_job"}),
    "finalising": frozenset({"end_run", "skip_unfinished"}),
    "publish": frozenset({"published", "update_job"}),
}
JOURNAL_WRITES = frozenset().union(*PHASE_WRITES.values()) | {"recover", "request_cancel", "add_retry"}
#: (store, phase) pairs a fault can meet: the spool is written only at a claim, the outbox only at a
#: publish, the status files on every tick whatever the jobs do ("any")
PAIRS: tuple[tuple[str, str], ...] = (
    *(("journal", phase) for phase in PHASE_WRITES),
    ("spool", "claim"),
    ("outbox", "publish"),
    ("status", "any"),
)


class StorageFaults:
    """Faults on one store at a time, for the in-process lifecycle driver (no root, no tmpfs).

    ``arm(store, phase)``: the fault switches on at that store's first write in that phase (the journal:
    a write method of the phase; the spool: a claim's copy; the outbox: a publish; the status files:
    the next page) and from then on every write to that store fails like a full disk (``ENOSPC``,
    SQLite's "database or disk is full") until ``clear()``. ``install()`` patches the classes, so every
    journal connection of the process (the daemon's, the claim thread's) meets it; ``uninstall()``
    puts them back."""

    def __init__(self) -> None:
        self.armed: tuple[str, str] | None = None
        self.on: str | None = None
        self.refusals = 0
        self.triggered = 0
        self._patched: list[tuple[Any, str, Any]] = []

    def arm(self, store: str, phase: str) -> None:
        self.armed, self.on = (store, phase), None

    def clear(self) -> None:
        self.armed = self.on = None

    def _hit(self, store: str, phase: str | None) -> bool:
        """True when this write to ``store`` (in ``phase``) must fail."""
        if self.armed is not None and self.armed[0] == store and (phase is None or self.armed[1] in (phase, "any")):
            self.on, self.armed = store, None
            self.triggered += 1
        if self.on == store:
            self.refusals += 1
            return True
        return False

    def install(self) -> None:
        import errno
        import os

        import batchd.intake.claim as claim_module
        from batchd.publish.outbox import Outbox
        from batchd.status.live import LiveViews

        faults = self

        def journal_write(name: str, orig: Any) -> Any:
            def call(self: Journal, *a: Any, **kw: Any) -> Any:
                phases = [p for p, names in PHASE_WRITES.items() if name in names]
                if name == "update_job":
                    phases = ["publish"] if "outbox_name" in kw else ["running"]
                if any(faults._hit("journal", p) for p in phases or [None]):  # type: ignore[list-item]
                    raise refusal(self.path, "full", what=name)
                return orig(self, *a, **kw)

            return call

        for name in sorted(JOURNAL_WRITES):
            self._patch(Journal, name, journal_write(name, getattr(Journal, name)))

        def enospc(path: object) -> OSError:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        real_open = open

        def spool_open(path: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
            if "w" in mode and faults._hit("spool", "claim"):
                raise enospc(path)
            return real_open(path, mode, *a, **kw)

        self._patch(claim_module, "open", spool_open)
        write_all = Outbox._write_all

        def outbox_write(self: Outbox, job: Any, final: str, folder: Path) -> None:
            if faults._hit("outbox", "publish"):
                raise enospc(folder)
            write_all(self, job, final, folder)

        self._patch(Outbox, "_write_all", outbox_write)
        write_page = LiveViews._write_page

        def status_write(self: LiveViews, *a: Any, **kw: Any) -> None:
            if faults._hit("status", "any"):
                raise enospc(self.settings.outbox / "!status.json")
            write_page(self, *a, **kw)

        self._patch(LiveViews, "_write_page", status_write)

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._patched.append((owner, name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, value)

    def uninstall(self) -> None:
        for owner, name, old in reversed(self._patched):
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)
        self._patched.clear()


_MISSING = object()
