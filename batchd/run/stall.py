"""The progress watchdog of a running job: while the backend answers, the journal takes writes and
requests wait to be asked, some request must finish every ``watchdog.stall_seconds`` (default: 10 x
the p99 latency seen so far, at least ``MIN_STALL_SECONDS``). When none did, the runner logs
``job_stalled`` with what every lane is doing and restarts from the journal (the path a restart
takes). ``healthy()`` is what the systemd ``WATCHDOG=1`` ping asks: it turns false when a stall
outlived its own restart, so systemd restarts the whole daemon. Pure logic on an injected clock."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger("batchd.runner")

MIN_STALL_SECONDS = 120.0
#: the stall threshold as a multiple of the p99 request latency seen so far
P99_FACTOR = 10.0


@dataclass(frozen=True)
class Stall:
    """No request finished for ``seconds`` (over ``threshold``); ``lanes``: what each lane was doing."""

    seconds: float
    threshold: float
    lanes: dict[str, str]


def p99(latencies: Sequence[float]) -> float | None:
    if not latencies:
        return None
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class StallWatch:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        configured: float | None = None,
        latencies: Callable[[], Sequence[float]] = lambda: (),
    ) -> None:
        self.clock = clock
        self.configured = configured
        self.latencies = latencies
        #: the last moment something moved: a request finished, or the wait was excused
        self.last = clock()
        self.stall: Stall | None = None
        self.stalled_at: float | None = None
        #: what each lane is doing and since when (``job_stalled`` says it)
        self.doing: dict[int, tuple[str, float]] = {}

    def threshold(self) -> float:
        if self.configured is not None:
            return self.configured
        seen = p99(self.latencies())
        return max(MIN_STALL_SECONDS, P99_FACTOR * seen) if seen is not None else MIN_STALL_SECONDS

    def progressed(self) -> None:
        """A request finished (answered or failed for good)."""
        self.last = self.clock()

    def lane(self, index: int, what: str) -> None:
        self.doing[index] = (what, self.clock())

    def lanes(self, now: float) -> dict[str, str]:
        return {f"lane {i}": f"{what} for {now - since:.0f}s" for i, (what, since) in sorted(self.doing.items())}

    def check(self, *, work_left: bool, excused: bool, job_id: str) -> Stall | None:
        """A new ``Stall`` (logged as ``job_stalled``) the first time the job is stalled, else None.
        ``excused``: the backend is down, the disk refuses writes, or the job is stopping: the
        clock starts again afterwards."""
        now = self.clock()
        if excused or not work_left:
            self.last = now
            return None
        if self.stall is not None:
            return None
        waited = now - self.last
        if waited < (limit := self.threshold()):
            return None
        self.stall = Stall(seconds=waited, threshold=limit, lanes=self.lanes(now))
        self.stalled_at = now
        log.error(
            "job_stalled",
            job_id=job_id,
            stalled_seconds=round(waited, 1),
            threshold_seconds=round(limit, 1),
            lanes=self.stall.lanes,
        )
        return self.stall

    def healthy(self) -> bool:
        """False once a stall outlived its restart by another threshold (the ping stops)."""
        return self.stalled_at is None or self.clock() - self.stalled_at < self.threshold()
