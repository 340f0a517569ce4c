"""Intake for the long-running daemon: watch the inbox, wait for stable files, claim them.

Two asyncio tasks. *watch* keeps an ``InboxWatcher`` running (re-creating it
when the inbox vanishes, is replaced or the config changes), feeds events and
periodic rescans into the ``StabilityTracker`` and queues what passes the rule.
*claims* copies and ingests queued files in a worker thread with its own
journal connection, so drops are claimed while a long job runs on the loop.
Which file was already claimed is the journal's to say (the files table),
never an in-memory set: a restart forgets nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from batchd.aio import wait_first
from batchd.config import Settings
from batchd.errors import BatchdError, StorageError
from batchd.intake.cancels import CancelDesk
from batchd.intake.claim import Claimer
from batchd.intake.inbox import Candidate, candidate_for, scan
from batchd.intake.watch import InboxWatcher, Signature, StabilityTracker, choose_mode, signature
from batchd.journal import JobState, Journal
from batchd.storage import DiskWatch, Store

log = structlog.get_logger("batchd.intake")

#: how often the watch task checks that the inbox is still the folder it watches
HEALTH_SECONDS = 1.0
UNAVAILABLE_BACKOFF_MAX = 30.0
CLAIM_BATCH = 64


class Intake:
    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        stop: asyncio.Event,
        on_claimed: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        disk: DiskWatch | None = None,
    ) -> None:
        #: a getter: SIGHUP swaps the daemon's settings and intake follows
        self.settings = settings
        self.stop = stop
        self.on_claimed = on_claimed
        self.clock = clock
        #: a spool or journal that refuses writes holds the claims (the files stay in the inbox)
        self.disk = disk or DiskWatch(clock=clock)
        self.tracker = StabilityTracker(stable_seconds=settings().watch.stable_seconds, clock=clock)
        self.ready = asyncio.Event()
        self._claims: asyncio.Queue[Candidate] = asyncio.Queue()
        self._nudge = asyncio.Event()
        self._rescan_asked = False
        #: ``NAME.cancel`` files, looked at every ``HEALTH_SECONDS`` (own journal connection, worker thread)
        self._desk: CancelDesk | None = None

    def nudge(self) -> None:
        """Look at the settings again now (after a reload)."""
        self._nudge.set()

    # -- watch task ------------------------------------------------------------------------

    async def watch(self) -> None:
        """Run watchers until stop; ``ready`` is set once the first one runs (or failed to start)."""
        loop = asyncio.get_running_loop()
        backoff, unavailable = 1.0, False

        # Called on watchdog's thread: hop onto the loop's thread before touching the tracker.
        def on_path(path: Path, sig: Signature | None) -> None:
            loop.call_soon_threadsafe(self._seen, path, sig)

        def on_folder(path: Path) -> None:
            loop.call_soon_threadsafe(self._ask_rescan)

        try:
            while not self.stop.is_set():
                try:
                    backoff, unavailable = await self._watch_once(on_path, on_folder, backoff, unavailable)
                except Exception:  # noqa: BLE001 - keep watching whatever went wrong; jobs still run
                    log.exception("watch_failed", inbox=str(self.settings().inbox))
                    self.ready.set()
                    await wait_first(self.stop.wait(), timeout=backoff)
                    backoff = min(UNAVAILABLE_BACKOFF_MAX, backoff * 2)
        finally:
            if self._desk is not None:
                self._desk.journal.close()

    async def _watch_once(
        self,
        on_path: Callable[[Path, Signature | None], None],
        on_folder: Callable[[Path], None],
        backoff: float,
        unavailable: bool,
    ) -> tuple[float, bool]:
        """Start a watcher and run it until it ends; returns the next (backoff, unavailable)."""
        settings = self.settings()
        inbox, w = settings.inbox, settings.watch
        mode = await asyncio.to_thread(choose_mode, w.mode, inbox)
        watcher = InboxWatcher(
            inbox=inbox,
            mode=mode,
            poll_seconds=w.poll_seconds,
            ignore=tuple(w.ignore),
            on_path=on_path,
            on_folder=on_folder,
        )
        try:
            await asyncio.to_thread(watcher.start)
        except OSError as exc:
            await asyncio.to_thread(watcher.stop)
            if not unavailable:  # once per outage, not once per retry
                log.warning("inbox_unavailable", inbox=str(inbox), error=str(exc))
            self.ready.set()  # still READY: jobs run while we wait for the share to come back
            await wait_first(self.stop.wait(), timeout=backoff)
            return min(UNAVAILABLE_BACKOFF_MAX, backoff * 2), True
        if unavailable:
            log.info("inbox_available", inbox=str(inbox))
        log.info("watch_started", inbox=str(inbox), mode=mode)
        try:
            await self._rescan()  # files dropped while we were down or not watching
            self.ready.set()
            lost = await self._run_watcher(watcher)
        finally:
            await asyncio.to_thread(watcher.stop)
        if lost:
            log.warning("watch_lost", inbox=str(inbox))
        return 1.0, False

    async def _run_watcher(self, watcher: InboxWatcher) -> bool:
        """Queue stable files until stop, a changed watch config, or a lost inbox (True)."""
        settings = self.settings()
        config = (settings.inbox, settings.watch.mode, settings.watch.poll_seconds, settings.watch.ignore)
        next_rescan = self.clock() + settings.watch.rescan_seconds
        next_health = self.clock() + HEALTH_SECONDS
        while not self.stop.is_set():
            settings = self.settings()
            w = settings.watch
            if config != (settings.inbox, w.mode, w.poll_seconds, w.ignore):
                log.info("watch_restarting", reason="config changed")
                return False
            self.tracker.stable_seconds = w.stable_seconds
            for path in self.tracker.ready():
                cand = candidate_for(settings.inbox, path)
                if cand is not None:
                    self._claims.put_nowait(cand)
            now = self.clock()
            if now >= next_health:
                next_health = now + HEALTH_SECONDS
                if not await asyncio.to_thread(watcher.healthy):
                    return True
                if await asyncio.to_thread(self._cancel_pass):
                    self.on_claimed()  # a job cancelled while queued is final now: publish it
            if self._rescan_asked or now >= next_rescan:
                # Safety net: inotify can overflow its queue or miss events (and sees nothing a
                # remote host writes); polling can miss a file replaced within one poll interval.
                self._rescan_asked = False
                await asyncio.to_thread(watcher.sync_folders)
                await self._rescan()
                next_rescan = self.clock() + w.rescan_seconds
            wait = min(next_health, next_rescan) - self.clock()
            due = self.tracker.next_due()
            if due is not None:
                wait = min(wait, due + 0.01)
            self._nudge.clear()
            await wait_first(self._nudge.wait(), timeout=max(0.01, wait))
        return False

    async def _rescan(self) -> None:
        settings = self.settings()
        inbox, ignore = settings.inbox, tuple(settings.watch.ignore)

        def listing() -> list[tuple[Path, Signature | None]]:
            return [(c.path, signature(c.path)) for c in scan(inbox, ignore)]

        found = await asyncio.to_thread(listing)
        for path, sig in found:
            self.tracker.offer(path, sig)
        log.debug("inbox_rescanned", candidates=len(found))
        self._nudge.set()

    def _cancel_pass(self) -> bool:
        """Runs in a worker thread: act on the ``.cancel`` files (``intake.cancels``); True if any cancelled."""
        settings = self.settings()
        if self._desk is None or self._desk.inbox != settings.inbox:
            if self._desk is not None:
                self._desk.journal.close()
            self._desk = CancelDesk(settings.inbox, Journal(settings.journal_path))
        try:
            return any(v.reason is None for v in self._desk.run_pass())
        except (BatchdError, OSError) as exc:
            log.error("cancel_pass_failed", error=str(exc))
            return False

    def _seen(self, path: Path, sig: Signature | None) -> None:
        self.tracker.seen(path, sig)
        self._nudge.set()

    def _ask_rescan(self) -> None:
        self._rescan_asked = True
        self._nudge.set()

    # -- claims task -------------------------------------------------------------------------

    async def claims(self) -> None:
        """Claim queued candidates in order until stop; the file in hand is always finished."""
        # A sqlite connection must not be used by two threads at once: the claim thread has its own.
        # WAL + busy_timeout let it write while the runner flushes; ingest commits every 5,000 rows.
        journal = Journal(self.settings().journal_path)
        try:
            while not self.stop.is_set():
                getter = asyncio.ensure_future(self._claims.get())
                await wait_first(getter, self.stop.wait())
                if not getter.done():
                    getter.cancel()
                    break
                batch = [getter.result()]
                while len(batch) < CLAIM_BATCH and not self._claims.empty():
                    batch.append(self._claims.get_nowait())
                try:
                    if await self._claim_until_stored(journal, batch):
                        self.on_claimed()
                except Exception:  # noqa: BLE001 - a dead claim task would silently stop intake
                    log.exception("claim_batch_failed", files=len(batch))
        finally:
            journal.close()

    async def _claim_until_stored(self, journal: Journal, batch: list[Candidate]) -> int:
        """Claim the batch; while the spool or the journal refuses writes, wait (bounded backoff) and
        try again: the files stay in the inbox meanwhile, none is rejected for a full disk."""
        while True:
            try:
                claimed = await asyncio.to_thread(self._claim_batch, journal, batch)
            except StorageError as exc:
                store = Store.JOURNAL if exc.path == str(journal.path) else Store.SPOOL
                self.disk.blocked(store, exc)
                await wait_first(self.stop.wait(), timeout=self.disk.next_delay(store))
                if self.stop.is_set():
                    return 0
                continue
            self.disk.recovered(Store.SPOOL)
            return claimed

    def _claim_batch(self, journal: Journal, batch: list[Candidate]) -> int:
        """Runs in the worker thread. Claim order is queue order, which is modification order."""
        claimer = Claimer(settings=self.settings(), journal=journal)
        claimed = 0
        for cand in batch:
            if self.stop.is_set():
                break
            try:
                claimed += claimer.claim(cand) is not None
            except StorageError:
                raise  # the disk, not the file: the whole batch waits and is tried again
            except (BatchdError, OSError) as exc:
                log.error("claim_failed", input=cand.rel, error=str(exc))
            except Exception:  # noqa: BLE001 - one file's failure never drops the rest of the batch
                log.exception("claim_failed", input=cand.rel)
        # A job left half-ingested by a failure above would hold up the queue: try it again.
        # Only inbox jobs: this thread is the only one that ingests those (the API ingests its own).
        for job in journal.jobs([JobState.INGESTING]):
            if job.source != "inbox":
                continue
            try:
                claimer.ingest(job.id)
                claimed += 1
            except StorageError:
                raise  # restartable from scratch: tried again with the batch, once the disk takes writes
            except (BatchdError, OSError) as exc:
                log.error("ingest_failed", job_id=job.id, input=job.input_name, error=str(exc))
        return claimed
