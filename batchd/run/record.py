"""The runner's journal writes, and what a refused write does: outcomes go in batches (every
``FLUSH_SECONDS`` or ``FLUSH_ROWS``), the job's counters at most every ``METRICS_SECONDS``, progress
samples when asked. A write the disk refuses (full, read-only, I/O error: ``StorageError``) is a
lifecycle event, not an exception that kills a task: ``ok`` is cleared (no lane starts a request, the
feeder takes none), the outcomes stay in memory, one retry task tries again with a bounded backoff
(``storage.DiskWatch``) and sets ``ok`` once the journal took them. If the process dies meanwhile
those requests are still ``running`` in the journal: the restart asks them again (never lost, never
written twice)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from batchd.aio import Sleep, wait_first
from batchd.errors import StorageError
from batchd.journal import Journal, Outcome
from batchd.metrics import JobMetrics
from batchd.storage import DiskWatch, Store

FLUSH_SECONDS = 0.25
FLUSH_ROWS = 512
METRICS_SECONDS = 2.0


class Recorder:
    """One job's writes; ``flush()`` and ``sample()`` never raise ``StorageError``."""

    def __init__(
        self,
        *,
        journal: Journal,
        job_id: str,
        metrics: JobMetrics,
        disk: DiskWatch,
        sleep: Sleep,
        clock: Callable[[], float],
        on_blocked: Callable[[StorageError], None],
    ) -> None:
        self.journal = journal
        self.job_id = job_id
        self.metrics = metrics
        self.disk = disk
        self.sleep = sleep
        self.clock = clock
        #: called once per episode (the runner pauses, or with ``--once`` ends the run)
        self.on_blocked = on_blocked
        self.pending: list[Outcome] = []
        #: set while the journal takes writes; lanes and the feeder wait on it
        self.ok = asyncio.Event()
        self.ok.set()
        self.error: StorageError | None = None
        self._retry: asyncio.Task[None] | None = None
        self._closed = False
        self.last_flush = clock()
        self._metrics_saved = self.last_flush

    @property
    def blocked(self) -> bool:
        return not self.ok.is_set()

    def add(self, outcome: Outcome) -> None:
        self.pending.append(outcome)
        if len(self.pending) >= FLUSH_ROWS:
            self.flush()

    def due(self) -> bool:
        return self.clock() - self.last_flush > FLUSH_SECONDS

    def flush(self, force: bool = False) -> bool:
        """Write what is pending (and the counters when due); False when the disk refused."""
        if self.blocked and not self._closed:
            return False  # the retry task writes; one episode, one retry loop
        try:
            self._write(force)
        except StorageError as exc:
            self.block(exc)
            return False
        self._recovered()
        return True

    def _write(self, force: bool) -> None:
        self.last_flush = self.clock()
        if self.pending:
            # One transaction: all of the batch or none of it, so it stays in memory until it went in.
            self.journal.record(self.job_id, self.pending)
            self.pending = []
        # Each journal write is an fsync that stalls every lane's event loop for a few ms,
        # so the counters (a restart continues from them) go at most every METRICS_SECONDS.
        if force or self.last_flush - self._metrics_saved >= METRICS_SECONDS:
            self.journal.update_job(self.job_id, metrics={"state": self.metrics.to_state()})
            self._metrics_saved = self.last_flush

    def write(self, what: Callable[[], Any]) -> bool:
        """Any other journal write of the run (a sample, the pinned context): False when refused."""
        if self.blocked and not self._closed:
            return False
        try:
            what()
        except StorageError as exc:
            self.block(exc)
            return False
        return True

    def block(self, exc: StorageError) -> None:
        """The journal refused a write: pause new work, keep what is in memory, retry with backoff."""
        if self.blocked:
            return
        self.ok.clear()
        self.error = exc
        self.disk.blocked(Store.JOURNAL, exc)
        self.on_blocked(exc)
        self._retry = asyncio.get_running_loop().create_task(self._retry_loop())

    async def _retry_loop(self) -> None:
        while True:
            await self.sleep(self.disk.next_delay(Store.JOURNAL))
            try:
                self._write(force=True)
            except StorageError as exc:
                self.error = exc
                continue
            break
        self._recovered()

    def _recovered(self) -> None:
        if self.blocked:
            self.error = None
            self.disk.recovered(Store.JOURNAL)
            self.ok.set()

    async def wait_ok(self, abort: asyncio.Event) -> None:
        """Until the journal takes writes again, or ``abort``."""
        if self.blocked:
            await wait_first(self.ok.wait(), abort.wait())

    def close(self) -> None:
        """The run ends: no more retries; each write from now on is tried once, blocked or not."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
