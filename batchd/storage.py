"""Storage faults as lifecycle events: which store (journal, spool, outbox, status files) cannot be
written, since when and why; one ``storage_blocked`` and one ``storage_recovered`` log event per
episode; the bounded backoff between tries; the words the status line, ``batchd status``, the status
page and the Prometheus gauge use ("waiting for disk space on PATH since HH:MM", "journal unwritable:
REASON"). Shared by the daemon, the runner and the live views (a worker thread too: it locks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog

from batchd.errors import StorageError

log = structlog.get_logger("batchd.storage")

#: first pause before the write is tried again, and the longest (the backoff doubles up to it)
RETRY_FIRST = 0.5
RETRY_MOST = 30.0


class Store(StrEnum):
    JOURNAL = "journal"
    SPOOL = "spool"
    OUTBOX = "outbox"
    STATUS = "status"


@dataclass(frozen=True)
class Blocked:
    """One episode: a store that refused a write, from ``since`` (wall clock) until a write succeeds."""

    store: Store
    path: str
    full: bool
    reason: str
    since: float
    #: the same moment on the injected monotonic clock
    since_clock: float

    def text(self) -> str:
        """What the status line, ``batchd status`` and the status page say."""
        hhmm = time.strftime("%H:%M", time.localtime(self.since))
        if self.full:
            return f"waiting for disk space on {self.path} since {hhmm}"
        return f"{self.store.value} unwritable: {self.reason[:120]} (since {hhmm})"

    def exit_text(self) -> str:
        """``batchd run --once`` ends with this (exit 1): everything is left resumable."""
        what = "no disk space" if self.full else "unwritable"
        return f"{self.store.value} {what} ({self.path}): {self.reason[:200]}; run again once it accepts writes"


class DiskWatch:
    """The stores blocked now; ``blocked()`` / ``recovered()`` from whoever met the fault or the success."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        first: float = RETRY_FIRST,
        most: float = RETRY_MOST,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self.first = first
        self.most = most
        self._lock = threading.Lock()
        self._blocked: dict[Store, Blocked] = {}
        self._delay: dict[Store, float] = {}
        #: episodes so far (the Prometheus counter and the tests read it)
        self.episodes = 0

    def blocked(self, store: Store, exc: StorageError) -> Blocked:
        """A write to ``store`` failed: the episode's record (started now unless already on)."""
        with self._lock:
            if (known := self._blocked.get(store)) is not None:
                return known
            episode = Blocked(
                store=store,
                path=exc.path or "?",
                full=exc.full,
                reason=exc.reason,
                since=self.wall(),
                since_clock=self.clock(),
            )
            self._blocked[store] = episode
            self._delay[store] = self.first
            self.episodes += 1
        log.error("storage_blocked", store=store.value, path=episode.path, full=episode.full, error=episode.reason)
        return episode

    def recovered(self, store: Store) -> None:
        """A write to ``store`` succeeded: the episode (if any) ends."""
        with self._lock:
            episode = self._blocked.pop(store, None)
            self._delay.pop(store, None)
        if episode is not None:
            log.info(
                "storage_recovered",
                store=store.value,
                path=episode.path,
                blocked_seconds=round(self.clock() - episode.since_clock, 1),
            )

    def next_delay(self, store: Store) -> float:
        """How long to wait before the next try: ``first``, doubling per failed try, at most ``most``."""
        with self._lock:
            delay = self._delay.get(store, self.first)
            self._delay[store] = min(self.most, delay * 2)
        return delay

    def is_blocked(self, store: Store | None = None) -> bool:
        with self._lock:
            return bool(self._blocked) if store is None else store in self._blocked

    def waiting(self) -> Blocked | None:
        """The oldest episode going on (what the one status line names), None when all is well."""
        with self._lock:
            return min(self._blocked.values(), key=lambda b: b.since_clock, default=None)

    def all(self) -> list[Blocked]:
        with self._lock:
            return sorted(self._blocked.values(), key=lambda b: b.since_clock)
