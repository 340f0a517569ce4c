"""How many requests to keep in flight: the adaptive lanes controller (``backend.lanes = "auto"``).

In the family of TCP Vegas, Netflix's concurrency-limits (Vegas, Gradient2) and
Envoy's adaptive-concurrency filter. Pure logic on an injected clock: the
runner calls ``start()`` before each backend call and ``done()`` after it, and
obeys ``limit``. Everything is measured over *windows of completed requests*
(at least ``min_samples`` and at least ``limit`` of them, all started under the
current limit), never over wall-clock ticks, so a 30 s generation and a 30 ms
one are treated alike.

First a **scan** (``knee.py``: 1, 2, 4, ... in flight until throughput stops
rising), then the rules below climb around the knee it found, from its latency
as the floor (limits below the knee do not lower it: a batching server is faster
there, not less queued). Scans come back after a capacity change and, within 2%
of the job's time, now and then.

Per window: ``R`` = mean latency of the window's requests (averaged with the
earlier windows at the same limit unless it jumped), ``X`` = throughput by
Little's law (mean in flight / ``R``), ``F`` = the no-load floor: the lowest
per-limit average plus its standard error (a bare minimum over many noisy
averages reads low), forgotten when the limit fell by a third or more and the
latency did not fall with it (then it is the work itself, not a queue).
With ``ratio = R / F``:

- **grow** when ``ratio < grow_ratio`` and the window used its limit: doubling
  (slow start) until the first back-off, then ``+max(1, limit // 8)``; also when
  the last step up bought at least half its share of extra throughput
  (batching servers, whose latency rises while their throughput still does);
- **back off on queueing** when latency rose and throughput did not: straight
  back to the previous limit after a step up that bought nothing; otherwise by
  one step, or (``ratio`` of 2 and more, e.g. the server lost capacity) to
  ``limit * target_ratio / ratio``, Vegas's estimate of what the server serves;
- **back off at once** on 503/429 (``x busy_factor``), on a timeout
  (``x timeout_factor``) and on a VRAM-pressure signal (``x vram_factor``;
  no growth until it clears); once per window, not once per failed reply;
- **hold** otherwise; after ``max(explore, cooldown)`` windows held, **probe**
  one step up to see whether the server has more room now.

A back-off remembers the limit it left as a ceiling; climbing back onto it
waits ``cooldown`` windows, and every undone step doubles ``cooldown`` (up to
``cooldown_max``) until a step up pays again. So a server with one slot is
offered a second request ever more rarely, and a held level costs one probe
per ``cooldown_max`` windows at most.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from batchd.run.knee import Knee, Reading, Verdict
from batchd.run.lanetypes import Change, LaneTuning, Outcome, Reason, Ticket

__all__ = ["Change", "LaneController", "LaneTuning", "Outcome", "Reason", "Ticket"]

T = TypeVar("T")


@dataclass
class _Window:
    """The first ``quota`` requests started under one limit; closed when the last of them is back.

    Waiting for all of them (not the first ``quota`` to finish) keeps the slow ones in the mean.
    """

    epoch: int
    quota: int
    t0: float = 0.0
    started: int = 0
    finished: int = 0
    latencies: list[float] = field(default_factory=list)
    count: int = 0  #: completions of any request since t0 (the rate)
    area: float = 0.0  #: integral of requests in flight since t0 (was the limit used?)
    read: bool = True  #: False for a scan step's ramp: its requests met a queue still filling (they read low)


class LaneController:
    """The number of requests allowed in flight, adjusted from what completed requests show."""

    def __init__(
        self, tuning: LaneTuning | None = None, *, initial: int | None = None, clock: Callable[[], float]
    ) -> None:
        self.tuning = tuning = tuning or LaneTuning()
        self.clock = clock
        self._holds = 0
        self._settling = False
        #: (limit, latency) while a deeper cut tests whether the floor moved
        self._floor_test: tuple[int, float] | None = None
        #: limit -> [mean window latency (a short average), windows seen]; the floor is the lowest
        self._levels: dict[int, list[float]] = {}  # [mean, windows, standard error]
        self.limit = max(tuning.lanes_min, min(tuning.lanes_max, initial or tuning.lanes_min))
        self.floor: float | None = None
        self.in_flight = 0
        self.changes: list[Change] = []
        self.on_change: Callable[[Change], None] | None = None
        self.pressure_on = False
        self._epoch = 0
        self._last_t = clock()
        self._slow_start = True
        self._ceiling: int | None = None
        self._cooldown = tuning.cooldown
        self._since_backoff = 0
        #: (limit, rate, latency) of the last window closed at another limit
        self._ref: tuple[int, float, float] | None = None
        self._last: tuple[int, float, float] | None = None
        self._open: dict[int, _Window] = {}
        #: the scan's knee: limits below it do not set the floor (a batching server is faster there)
        self._pin = 0
        #: rows the job has left, where the runner knows (a scan looks past a flat step only in a long job)
        self.rows_left: Callable[[], int | None] = lambda: None
        self.knee = Knee(
            lanes_max=tuning.lanes_max, now=self._last_t, samples=tuning.min_samples, rows_left=lambda: self.rows_left()
        )
        if not self.fixed:
            self.knee.begin(self.limit, self._last_t)
        self._collecting = _Window(0, self._quota())
        self._reset_windows()

    @property
    def fixed(self) -> bool:
        return self.tuning.lanes_min == self.tuning.lanes_max

    # -- what the runner calls ---------------------------------------------------------

    def start(self) -> Ticket:
        now = self.clock()
        self._integrate(now)
        self.in_flight += 1
        w = self._collecting
        if w.started == 0:
            w.t0 = now
            self._open[w.epoch] = w
        w.started += 1
        if w.started >= w.quota:  # full: it now only waits for its requests to come back
            self._epoch += 1
            self._collecting = _Window(self._epoch, self._quota())
        return Ticket(w.epoch, now)

    async def measure(self, call: Awaitable[T]) -> T:
        """Await one call as a sample: ``start`` now, ``done`` with how it went (``Outcome.of`` its error)."""
        ticket = self.start()
        try:
            result = await call
        except BaseException as exc:
            self.done(ticket, Outcome.of(exc))
            raise
        self.done(ticket, Outcome.OK)
        return result

    def done(self, ticket: Ticket, outcome: Outcome = Outcome.OK) -> Change | None:
        now = self.clock()
        self._integrate(now)
        self.in_flight = max(0, self.in_flight - 1)
        w = self._open.get(ticket.epoch)  # None: sent under a limit that has changed since
        if outcome is Outcome.BUSY and w is not None:
            return self._backoff(self.tuning.busy_factor, Reason.BUSY, now)
        if outcome is Outcome.TIMEOUT and w is not None:
            return self._backoff(self.tuning.timeout_factor, Reason.TIMEOUT, now)
        if outcome is Outcome.OK:
            for other in self._open.values():
                other.count += 1
        if w is None:
            return None
        w.finished += 1
        if outcome is Outcome.OK:
            w.latencies.append(now - ticket.started)
        if w.started >= w.quota and w.finished >= w.started:
            del self._open[w.epoch]
            if w.latencies:
                return self._close(w, now)
        return None

    def pressure(self, on: bool, *, again: bool = False) -> Change | None:
        """The VRAM policy's signal: shrink when it starts (and ``again`` on each further step),
        no growth while it lasts."""
        was, self.pressure_on = self.pressure_on, on
        if on and (again or not was):
            return self._backoff(self.tuning.vram_factor, Reason.VRAM, self.clock())
        return None

    # -- windows and decisions -------------------------------------------------------------

    def _quota(self) -> int:
        return max(self.tuning.min_samples // (4 if self.knee.scanning else 1), self.limit)

    def _reset_windows(self) -> None:
        """Forget every open window: what they measured ran under another limit."""
        self._epoch += 1
        self._open = {}
        self._collecting = _Window(self._epoch, self._quota())

    def _integrate(self, now: float) -> None:
        dt = now - self._last_t
        if dt > 0:
            for w in self._open.values():
                w.area += self.in_flight * dt
        self._last_t = now

    def _close(self, w: _Window, now: float) -> Change | None:
        if self._settling:  # the first window after a cut still waits behind the old queue: not a reading
            self._settling = False
            return None
        if not w.read:
            return None
        span = max(now - w.t0, 1e-9)
        latency = sum(w.latencies) / len(w.latencies)
        rate = w.area / span / latency  # Little: in flight / time in system (steadier than counting)
        busy = w.area / span
        limit = self.limit
        reading = Reading.of(limit, rate, w.latencies)
        if self.knee.scanning:
            return self._scan_step(reading, busy >= 0.8 * limit, now)
        last = self._last
        test, self._floor_test = self._floor_test, None
        # a queue halves with half the load; the work itself does not (0.75: well clear of both)
        if test is not None and latency >= 0.75 * test[1]:
            # Half as many in flight and no faster: this latency is the work itself, not a queue.
            self._levels.clear()
            self.floor = None
            self._last = None
            self._ref = None
            self._record(w, latency)
            return self._set(test[0], Reason.GROW, now, {"latency": latency, "floor": latency, "rate": 0.0})
        slow = latency >= self.tuning.shrink_ratio * (self.floor or latency)
        suspect = slow and last is not None and last[0] >= 1.5 * limit and latency >= 0.9 * last[2]
        if slow and limit <= self.tuning.lanes_min:  # nothing lower to try: at the least load it is the work itself
            self._levels.clear()
        elif suspect and test is None:
            # Far fewer in flight and no faster: a stale floor, or a queue that a deeper cut would show?
            if limit // 2 < self.tuning.lanes_min:
                self._levels.clear()
            else:
                self._floor_test = (limit, latency)
                return self._backoff_to(
                    limit // 2, Reason.QUEUEING, now, {"latency": latency, "floor": self.floor or latency}
                )
        level = self._record(w, latency)
        assert self.floor is not None  # _record set it
        if latency < 2 * self.floor:  # a single window is noisy; the level's average is not
            latency = level[0]
        just_grew = last is not None and last[0] < limit
        if last is not None and last[0] != limit:
            self._ref = last
        self._last = (limit, rate, latency)
        self._since_backoff += 1
        ratio = latency / self.floor
        ref = self._ref
        gained = self._gained(limit, rate)
        used = busy >= 0.8 * limit
        figures = {"latency": latency, "floor": self.floor, "rate": rate}
        change = self._decide(limit, ratio, rate, gained, used, just_grew, ref, now, figures)
        if change is None and used and not self.pressure_on and self.knee.periodic_due(now, limit, span):
            # held: look again above, past any flat step a one-step probe cannot see across
            change = self._set(self.knee.begin(limit, now, reading), Reason.SCAN, now, figures)
        if self._since_backoff and self._ceiling is not None and limit >= self._ceiling:
            self._ceiling = None  # that level held: forget it
        return change

    def _record(self, w: _Window, latency: float) -> list[float]:
        """Fold the window into its limit's average; the floor follows."""
        n = len(w.latencies)
        spread = (sum((x - latency) ** 2 for x in w.latencies) / max(1, n - 1)) ** 0.5
        level = self._levels.setdefault(self.limit, [latency, 0, 0.0])
        level[1] += 1
        level[0] += max(1 / level[1], 0.2) * (latency - level[0])
        level[2] = spread / (n * min(level[1], 9)) ** 0.5  # the standard error of that average
        # The lowest average plus its error: a plain minimum over many noisy averages reads low.
        pinned = [m + se for lim, (m, _, se) in self._levels.items() if lim >= self._pin]
        self.floor = min(pinned or [m + se for m, _, se in self._levels.values()])
        return level

    def _decide(
        self,
        limit: int,
        ratio: float,
        rate: float,
        gained: bool,
        used: bool,
        just_grew: bool,
        ref: tuple[int, float, float] | None,
        now: float,
        figures: dict[str, float],
    ) -> Change | None:
        step = limit if self._slow_start else max(1, limit // 8)
        if ratio >= self.tuning.shrink_ratio and not gained:
            if just_grew and ref is not None:
                return self._backoff_to(ref[0], Reason.QUEUEING, now, figures)  # the step bought a queue
            if ref is not None and ref[0] > limit and rate >= 0.9 * ref[1]:
                return None  # the excess is gone: this is the knee
            target = int(limit * self.tuning.target_ratio / ratio)  # Vegas: what the server really serves
            if ratio < 2 * self.tuning.shrink_ratio - 1:  # a mild queue (or noise on the floor): one step
                target = max(target, limit - max(1, limit // 8))
            elif self.knee.after_change_allowed(now):  # the server lost capacity: scan from a quarter of the cut
                self.knee.begin(max(self.tuning.lanes_min, min(limit - 1, target) // 4), now)
                target //= 4
            return self._backoff_to(target, Reason.QUEUEING, now, figures)
        if self.pressure_on or not used:
            return None
        # slow start doubles until a queue shows (like TCP's until a loss): a noisy floor must not stall it
        if ratio < self.tuning.grow_ratio or (self._slow_start and ratio < self.tuning.shrink_ratio):
            if just_grew:
                self._cooldown = self.tuning.cooldown  # the last step up was free: explore freely again
            return self._grow(limit + step, Reason.GROW, now, figures)
        if just_grew and ref is not None:
            if gained:  # latency rose, but so did throughput (a batching server): keep going
                self._cooldown = self.tuning.cooldown
                return self._grow(limit + step, Reason.THROUGHPUT, now, figures)
            if figures["latency"] / ref[2] - 1 >= 0.5 * (limit / ref[0] - 1):  # a queue grows with the step
                return self._backoff_to(ref[0], Reason.QUEUEING, now, figures)  # latency rose, nothing gained
            return None  # neither: keep the step (the next windows decide)
        self._holds += 1
        if self._holds >= max(self.tuning.explore, self._cooldown):  # held a while: does one step more pay now?
            return self._grow(limit + step, Reason.PROBE, now, figures)
        return None

    def _gained(self, limit: int, rate: float) -> bool:
        """Did the last increase buy at least half its share of extra throughput?"""
        ref = self._ref
        if ref is None or ref[0] >= limit or ref[1] <= 0:
            return False
        return rate / ref[1] - 1 >= 0.5 * (limit / ref[0] - 1)

    def _grow(self, target: int, reason: Reason, now: float, figures: dict[str, float]) -> Change | None:
        if self._ceiling is not None and target >= self._ceiling:
            if self._since_backoff < self._cooldown:
                target = self._ceiling - 1  # up to just below the level that failed, not onto it
            else:
                target = self._ceiling  # try that level once more, one step at a time
        return self._set(max(target, self.limit), reason, now, figures)

    def _backoff(self, factor: float, reason: Reason, now: float) -> Change | None:
        target = int(self.limit * factor)
        verdict = self.knee.finish(now, failed=True)  # errors end a scan: back to its knee below, if any
        if verdict is not None:
            self._rebase(verdict)
            target = min(target, verdict.limit)
        return self._backoff_to(target, reason, now, {})

    def _scan_step(self, reading: Reading, used: bool, now: float) -> Change | None:
        figures = {"latency": reading.latency, "rate": reading.rate}
        nxt = self.knee.observe(reading, used=used)
        if nxt is not None:  # (the same limit: that level is read again)
            return self._set(nxt, Reason.SCAN, now, figures)
        verdict = self.knee.finish(now)
        assert verdict is not None  # it has just measured a level
        self._rebase(verdict)
        return self._set(verdict.limit, Reason.KNEE, now, {**figures, "floor": self.floor or reading.latency})

    def _rebase(self, verdict: Verdict) -> None:
        """Climb from the knee the scan found: no queue there, so its latency is the floor."""
        if verdict.floor is not None:  # (None: a periodic look found nothing better; keep what we knew)
            self._levels = {lim: [mean, 1, se] for lim, (mean, se) in verdict.floor.items()}
            self.floor, self._pin = min(m + se for m, se in verdict.floor.values()), min(verdict.floor)
            self._ref = self._last = self._floor_test = None
            self._ceiling = verdict.ceiling  # the next level did not pay: climbing onto it waits, as after a cut
            # the scan's look at the ceiling was one step up undone: the next exploration waits twice as long
            wait = self.tuning.cooldown * (2 if verdict.ceiling is not None else 1)
            self._slow_start, self._cooldown, self._holds, self._since_backoff = False, wait, 0, 0

    def _backoff_to(self, target: int, reason: Reason, now: float, figures: dict[str, float]) -> Change | None:
        old = self.limit
        target = min(old - 1, target)
        if not self._slow_start:  # each undone step makes the next exploration wait twice as long
            self._cooldown = min(self.tuning.cooldown_max, self._cooldown * 2)
        self._ceiling = old
        self._since_backoff = 0
        self._slow_start = False
        return self._set(target, reason, now, figures)

    def _set(self, target: int, reason: Reason, now: float, figures: dict[str, float]) -> Change | None:
        target = max(self.tuning.lanes_min, min(self.tuning.lanes_max, target))
        old = self.limit
        if target == old:
            return None
        self._holds = 0
        self._settling = target < old
        self.limit = target
        self._reset_windows()
        if reason is Reason.SCAN:  # the burst the step lets in meets a queue still filling: read after it
            self._collecting.quota, self._collecting.read = target - old, False
        change = Change(
            at=now,
            old=old,
            new=target,
            reason=reason,
            latency=figures.get("latency"),
            floor=figures.get("floor"),
            rate=figures.get("rate"),
        )
        self.changes.append(change)
        if self.on_change is not None:
            self.on_change(change)
        return change
