"""Keeps the daemon's outside views current: the outbox status files and the Prometheus metrics.

One task on the event loop wakes every ``TICK`` seconds, or at once when the
daemon pokes it (a job claimed, started, ended, published). On the loop it
reads only memory, through the narrow ``state.StatusState`` the daemon hands
it (never the daemon or its runner): the running job's counters, its outage
gate, the lanes in flight. Journal reads, page rendering and file writes go to one worker thread
with its own journal connection, so neither SQLite nor a slow share costs the
lanes anything. The status files are rewritten at most every
``status_page.interval_seconds`` unless something changed; the textfile and
the queue gauges every ``metrics.interval_seconds``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from batchd.aio import wait_first
from batchd.errors import BatchdError, StorageError
from batchd.fsutil import write_atomic
from batchd.journal import Job, Journal
from batchd.metrics import JobMetrics
from batchd.publish.preview import Previews
from batchd.publish.share import SharedFolder
from batchd.redact import host_of
from batchd.status import page as statuspage
from batchd.status.page import DaemonState, Waiting
from batchd.status.prom import Exporter, Live, Queue
from batchd.status.state import StatusState
from batchd.status.views import StatusViews, ViewState, status_views
from batchd.storage import Blocked, Store

log = structlog.get_logger("batchd.live")

TICK = 1.0
#: pokes closer together than this share one write (fifty tiny jobs publishing at once)
MIN_GAP = 0.25
#: how often an idle daemon asks the backend whether it is up (during a job the outage gate knows)
PING_SECONDS = 30.0
#: a failing write (share gone, disk full) is logged at most this often
WARN_SECONDS = 300.0


@dataclass(frozen=True)
class _Probe:
    live: Live
    waiting: Waiting | None
    storage: tuple[Blocked, ...]
    #: what, when it changes, is worth a page at once
    signature: tuple[Any, ...]


class LiveViews:
    """See the module docstring. ``poke()`` from anywhere on the loop; ``run()`` is the task."""

    def __init__(self, *, state: StatusState, wall: Callable[[], float] = time.time) -> None:
        self.state = state
        self.wall = wall
        self.exporter = Exporter(state.settings.metrics)
        #: the running job's first look (``outbox/NAME.preview/``), written from the worker thread
        self.previews = Previews(lambda: self.state.settings, wall)
        self._poked = asyncio.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._journal: Journal | None = None  # owned by the worker thread
        self._outage: tuple[float, float] | None = None  # (gate's down_since, wall-clock since)
        self._backend_up: bool | None = None
        self._pinging: asyncio.Task[None] | None = None
        self._last_ping = float("-inf")
        self._warned: dict[str, float] = {}
        self._chown_warned = False
        self.tick = TICK
        self.min_gap = MIN_GAP
        self._signature: tuple[Any, ...] | None = None
        self._reload_warned = False
        self._last_page = self._last_metrics = self._last_write = float("-inf")

    @property
    def settings(self) -> Any:
        return self.state.settings  # a SIGHUP reload is seen at the next tick

    # -- what the daemon tells us ---------------------------------------------------------

    def poke(self) -> None:
        self._poked.set()

    def job_started(self, metrics: JobMetrics) -> None:
        self.exporter.job_started(metrics)
        self.poke()

    def job_ended(self) -> None:
        self.exporter.job_ended()
        self.poke()

    def job_published(self, job: Job, counts: dict[str, int]) -> None:
        self.exporter.job_published(job.state.value, counts)
        self.poke()

    # -- the task -------------------------------------------------------------------------

    def start(self) -> None:
        """Open the metrics endpoint; ConfigError (exit 2) on a bad address or a port in use."""
        self.exporter.start()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.step()
            except Exception as exc:  # noqa: BLE001 - a bug in a view must not stop the views for good
                self._warn("live_failed", repr(exc))
            if self._poked.is_set():  # poked within min_gap of the last write: it goes after the gap
                await asyncio.sleep(self.min_gap)
                continue
            # Not wait_for: on 3.11 it swallows a cancel that lands as the event fires (bpo-42130).
            await wait_first(self._poked.wait(), stop.wait(), timeout=self.tick)

    async def step(self) -> None:
        """One tick: refresh the in-memory gauges; write what is due (in the worker thread)."""
        if self.settings.metrics != self.exporter.settings and not self._reload_warned:
            self._reload_warned = True  # the listener and the file were set up at start; a SIGHUP keeps them
            log.warning("config_reload_partial", key="metrics", reason="[metrics] changes apply at the next restart")
        probe = self._probe()
        probe = replace(
            probe,
            live=replace(probe.live, storage_blocked=tuple((b.store.value, b.since) for b in probe.storage)),
            signature=(*probe.signature, tuple(b.store for b in probe.storage)),
        )
        self.exporter.set_live(probe.live)
        self.exporter.refresh()
        now = self.state.clock()
        poked = self._poked.is_set() or probe.signature != self._signature
        page = self.settings.status_page.enabled and (
            poked or now - self._last_page >= self.settings.status_page.interval_seconds
        )
        metrics = self.exporter.enabled and now - self._last_metrics >= self.settings.metrics.interval_seconds
        # The gap is a real-time brake on rewrites, not a schedule: it ignores an injected clock.
        if (page or metrics) and time.monotonic() - self._last_write >= self.min_gap:
            self._poked.clear()
            self._signature = probe.signature
            self._last_write = time.monotonic()
            if page:
                self._last_page = now
            if metrics:
                self._last_metrics = now
            await self._in_thread(
                page=page, metrics=metrics, state=DaemonState.RUNNING, waiting=probe.waiting, storage=probe.storage
            )
        self._maybe_ping()

    async def close(self) -> None:
        """A last page saying the daemon stopped (``run --once`` leaves it too), then let go."""
        if self._pinging is not None:
            self._pinging.cancel()
        self.exporter.job_ended()
        try:
            await self._in_thread(
                page=self.settings.status_page.enabled,
                metrics=self.exporter.enabled,
                state=DaemonState.STOPPED,
                waiting=None,
                storage=(),
            )
        except Exception as exc:  # noqa: BLE001 - shutting down: a last page is nice, not essential
            self._warn("live_failed", repr(exc))
        finally:
            self.exporter.stop()
            if self._pool is not None:
                pool, self._pool = self._pool, None
                await asyncio.get_running_loop().run_in_executor(pool, self._close_journal)
                pool.shutdown(wait=True)

    # -- on the loop: memory only -----------------------------------------------------------

    def _probe(self) -> _Probe:
        job = self.state.progress()
        if job is None:
            self._outage = None
            live = Live(backend_up=self._backend_up)
            return _Probe(live, None, tuple(self.state.disk.all()), (None, self.state.jobs_done))
        waiting = None
        if job.down_since is not None:
            if self._outage is None or self._outage[0] != job.down_since:
                self._outage = (job.down_since, self.wall() - (self.state.clock() - job.down_since))
            waiting = Waiting(job_id=job.job_id, backend=host_of(job.backend_host), since=self._outage[1])
        else:
            self._outage = None
        self._backend_up = job.backend_up
        live = Live(
            job_running=True,
            lanes=job.lanes,
            lanes_active=job.lanes_active,
            lanes_in_use=job.in_flight,
            backend_up=job.backend_up,
            vram_used_bytes=job.metrics.vram_used_bytes,
            vram_total_bytes=job.metrics.vram_total,
        )
        return _Probe(
            live,
            waiting,
            tuple(self.state.disk.all()),
            (job.job_id, waiting is None, job.cancelled, self.state.jobs_done),
        )

    def _maybe_ping(self) -> None:
        """Idle: is the backend there? (Prometheus' batchd_backend_up; during a job the gate says.)"""
        if not self.exporter.enabled or self.state.progress() is not None:
            return
        now = self.state.clock()
        if now - self._last_ping < PING_SECONDS or (self._pinging is not None and not self._pinging.done()):
            return
        self._last_ping = now
        self._pinging = asyncio.create_task(self._ping())

    async def _ping(self) -> None:
        try:
            await asyncio.wait_for(self.state.ping_backend(), timeout=10)
            self._backend_up = True
        except (TimeoutError, BatchdError):
            self._backend_up = False

    # -- in the worker thread: journal, rendering, files ---------------------------------------

    async def _in_thread(self, **kw: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchd-live")
        await asyncio.get_running_loop().run_in_executor(self._pool, lambda: self._write(**kw))

    def _write(
        self, *, page: bool, metrics: bool, state: DaemonState, waiting: Waiting | None, storage: tuple[Blocked, ...]
    ) -> None:
        settings = self.settings
        try:
            journal = self._open_journal()
            if journal is None:
                return
            now = self.wall()
            limit = settings.status_page.recent if page else 0
            views = status_views(journal, limit=limit, now=now, schedule=settings.schedule)
        except (BatchdError, OSError) as exc:
            self._warn("status_read_failed", str(exc))
            return
        self.exporter.set_queue(_queue(views, journal))
        self._previews(journal, views)
        if page:
            try:
                self._write_page(views, now, state, waiting, storage)
            except OSError as exc:
                self._warn("status_page_failed", str(exc), outbox=str(settings.outbox))
                self.state.disk.blocked(Store.STATUS, StorageError.from_os("cannot write the status page", exc))
            else:
                self.state.disk.recovered(Store.STATUS)
        if metrics:
            try:
                self.exporter.write_textfile()
            except OSError as exc:
                self._warn("metrics_textfile_failed", str(exc), path=str(settings.metrics.textfile))

    def _write_page(
        self, views: StatusViews, now: float, state: DaemonState, waiting: Waiting | None, storage: tuple[Blocked, ...]
    ) -> None:
        outbox: Path = self.settings.outbox
        outbox.mkdir(parents=True, exist_ok=True)
        data = statuspage.page_data(
            views, now=now, daemon=state, waiting=waiting, storage=storage, previews=self.previews.folders
        )
        gid = SharedFolder.of(outbox, group=self.settings.group).gid
        # JSON first: a script that follows the page's link never finds older data than the page showed.
        owned = write_atomic(outbox / statuspage.STATUS_JSON, statuspage.render_json(data), gid=gid)
        owned &= write_atomic(
            outbox / statuspage.STATUS_HTML, statuspage.render_html(data, outbox=outbox).encode("utf-8"), gid=gid
        )
        if not owned and not self._chown_warned:
            self._chown_warned = True
            log.warning("status_page_chown_failed", outbox=str(outbox), gid=gid)

    def _previews(self, journal: Journal, views: StatusViews) -> None:
        """A first look at the running (or paused) job when one is due (``publish.preview``)."""
        keep = set()
        for v in views.active:
            paused = v.attention is not None
            if not (v.state.running or paused):
                continue
            keep.add(v.job_id)
            try:
                self.previews.consider(journal, v.job_id, v.done + v.failed, paused)
            except (OSError, BatchdError) as exc:
                self._warn("preview_failed", str(exc), job_id=v.job_id)
        self.previews.forget(keep)

    def _open_journal(self) -> Journal | None:
        if self._journal is None:
            path = self.settings.journal_path
            if not path.exists():
                return None
            self._journal = Journal(path)
        return self._journal

    def _close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def _warn(self, event: str, error: str, **fields: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(event, float("-inf")) >= WARN_SECONDS:
            self._warned[event] = now
            log.warning(event, error=error, **fields)


def _queue(views: StatusViews, journal: Journal) -> Queue:
    running = views.running
    head = running[0] if running else None
    waiting = [v for v in views.active if v.state in (ViewState.QUEUED, ViewState.INGESTING)]
    return Queue(
        by_priority=Counter(v.priority or 0 for v in waiting),
        preemptions=journal.preemptions(),
        notifications=journal.notification_counts(),
        jobs=sum(1 for v in views.active if v.state in (ViewState.QUEUED, ViewState.INGESTING)),
        requests=sum(max(0, v.total - v.finished) for v in views.active),
        progress=head.progress if head else None,
        eta_seconds=head.eta_seconds if head else None,
    )
