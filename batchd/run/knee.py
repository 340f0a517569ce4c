"""Where a server's throughput curve has its knee: the exponential scan the lanes controller runs first.

A hill-climber only sees the slope at its next step, and real servers' curves are
not concave: on llama.cpp over two busy CPU cores a second request in flight
doubles the latency and buys nothing while eight buy almost twice the
throughput (CPU batching; vLLM's chunked prefill and Ollama's queue have flats
of their own). So the controller (``lanes.LaneController``) first *scans*:
limits ``start``, ``2 x start``, ``4 x start``, ... up to ``lanes_max``, each held
for one window of completed requests (the controller's windows; here only
their figures arrive as a ``Reading``), and stops when

- **throughput falls**: past a level that paid, one reads below ``fall`` x the best
  (before one paid, a fall is a flat step: a busy moment on a shared CPU reads so);
- **it stops paying**: levels in a row that do not pay (below ``gain`` over the
  best so far): ``patience`` before any level has paid, so a scan looks up to
  16 x its first level (one flat first step is not enough: that is the curve
  above; llama.cpp with 16 slots on one CPU thread read the same at 1, 2, 4 and 8
  in flight and 1.34x at 16); ``patience_past_gain`` once one has (a flat step
  right after a gain can hide the next one); one wherever the job's rows do not
  allow the look (below). A flat step further on is the periodic re-scan's to
  find, at a bounded cost, not every scan's;
- **the queue is deep**: past a gain, a level that bought nothing has a p95 above
  ``p95_factor`` x the best level's (a pure queue's latency doubles per step; before
  a gain, one slow request among a few on a busy CPU must not end the scan);
- **errors appear**: a 503/429, a timeout or VRAM pressure (``abort``);
- it reaches ``lanes_max``, or the client could not fill a level.

Looking past a flat level costs latency, not throughput (on a server that only
queues, each request there waits for the others): so a scan looks past one only
while the job has ``look_rows`` rows left per level it would look at (those
queued requests stay within ~4% of the job and its p95 is untouched), and reads
a level again (a noisy reading) under the same rule for that level. A 160-row job on a one-slot server thus stops
at 2; a 170,000-row job against llama.cpp on busy CPU cores looks on to 8.

The **knee** is the lowest level within ``tie`` of the best throughput seen; the
controller goes there and hill-climbs around it. Scans come back (``Knee``):
after a detected capacity change (from the controller's cut upward; at most one
per ``gap`` x the last scan's duration) and periodically from the current limit
upward, only while all scans together stay within ``budget`` of the job's time
(a flat step can hide a gain that appeared later: no probe of one step sees it).
Pure logic on the controller's injected clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reading:
    """One window's figures at one limit."""

    limit: int
    rate: float  #: completions per second (Little's law over the window)
    latency: float  #: mean seconds per request
    p95: float
    cv: float = 0.0  #: the latencies' standard deviation / their mean
    samples: int = 1  #: requests behind the mean

    @classmethod
    def of(cls, limit: int, rate: float, latencies: list[float]) -> Reading:
        lat, n = sorted(latencies), len(latencies)
        mean = sum(lat) / n
        sd = (sum((x - mean) ** 2 for x in lat) / max(1, n - 1)) ** 0.5
        return cls(limit, rate, mean, lat[int(0.95 * (n - 1))], sd / mean if mean > 0 else 0.0, n)

    def pooled(self, more: Reading) -> Reading:
        """This level's reading and one more window of it, as one."""
        n1, n2 = self.samples, more.samples
        n = n1 + n2

        def mean(a: float, b: float) -> float:
            return (n1 * a + n2 * b) / n

        lat = mean(self.latency, more.latency)
        var = mean((self.cv * self.latency) ** 2, (more.cv * more.latency) ** 2)
        var += n1 * n2 * (self.latency - more.latency) ** 2 / n**2  # the windows' means differ too
        return Reading(self.limit, mean(self.rate, more.rate), lat, max(self.p95, more.p95), var**0.5 / lat, n)


@dataclass(frozen=True)
class Verdict:
    """How a scan ended: the limit to go to, and what the controller climbs from there."""

    limit: int
    #: the latency at the knee without a queue, (mean, standard error) per level that read it; None: a
    #: periodic look that found nothing better than where it started, so the controller keeps what it knew
    floor: dict[int, tuple[float, float]] | None
    ceiling: int | None  #: the next level it measured (it did not pay)


@dataclass(frozen=True)
class ScanRules:
    gain: float = 0.1  #: a level pays when it reads this much above the best so far
    fall: float = 0.85  #: below this share of the best: the curve falls, stop
    patience: int = 4  #: levels in a row that do not pay before the scan stops, while none has paid yet
    patience_past_gain: int = 2  #: the same, once a level has paid
    p95_factor: float = 4.0  #: a level that did not pay with a p95 this many times the best's: stop
    tie: float = 0.05  #: the knee: the lowest level within this share of the best throughput
    #: a level is read again (up to the controller's ``min_samples`` requests) until its error is below this:
    #: a steady server is read from a few requests per level, a noisy one from more
    precision: float = 0.05
    budget: float = 0.02  #: periodic re-scans only while all scans took at most this share of the time
    gap: float = 5.0  #: a re-scan after a capacity change waits this many last-scan durations
    #: a look past a flat level L queues about 2 L requests on a server that only queues (its latency
    #: doubles): the scan looks only while the job has this many rows left per level, so those requests
    #: stay within 4% of the job (its p95 untouched); a short job stops at the first flat step
    look_rows: int = 50


@dataclass
class Scan:
    """One scan: the levels it measured and the level it asks for next."""

    start: int
    lanes_max: int
    began: float
    rules: ScanRules = field(default_factory=ScanRules)
    samples: int = 16  #: the most requests one level is read from
    points: list[Reading] = field(default_factory=list)
    #: True when it went on from a level the controller was holding (a periodic re-scan)
    from_hold: bool = False
    #: the work's latency cv (from the first level, or the last scan's): in a queue latencies vary less
    #: than the work does, while the throughput still varies with it (a queued level's spread understates
    #: its error)
    cv: float = 0.0
    known_cv: float = 0.0  #: the last scans' (a first level may be queued too: after a cut)
    #: rows the job has left (None: not known, a long job); see ``ScanRules.look_rows``
    rows_left: Callable[[], int | None] = field(default=lambda: None, repr=False)
    _misses: int = 0
    _paid: bool = False

    def best(self) -> Reading | None:
        return max(self.points, key=lambda r: r.rate, default=None)

    def knee(self) -> Reading | None:
        """The lowest level within ``tie`` (or the readings' own error) of the best throughput."""
        best = self.best()
        if best is None:
            return None
        if self.from_hold and not self._pays(best, self.points[0]):
            return self.points[0]  # a look from a held level moves only on a clear gain
        near = [r for r in self.points if r.rate >= (1 - max(self.rules.tie, 2 * self._apart(r, best))) * best.rate]
        return min(near, key=lambda r: r.limit)

    def observe(self, reading: Reading, *, used: bool = True) -> int | None:
        """Fold in one level's reading; the next limit to measure, or None when the scan is over."""
        if self.points and self.points[-1].limit == reading.limit:  # the same level again: one reading
            reading = self.points.pop().pooled(reading)
        if not self.points and not self.from_hold:  # the first level: no queue, its spread is the work's
            self.cv = max(self.known_cv, reading.cv)
        noisy = self._error(reading) > self.rules.precision
        if used and reading.samples < self.samples and noisy and self._room(2 * reading.limit):
            # (re-reads are requests run at a level that may queue: a short job reads a high level once)
            self.points.append(reading)
            return reading.limit  # too noisy to decide on yet
        before = self.best()
        self.points.append(reading)
        if not used or reading.limit >= self.lanes_max:
            return None
        if before is not None:
            falls = reading.rate < (1 - max(1 - self.rules.fall, 2 * self._apart(reading, before))) * before.rate
            if falls and self._paid:  # clearly below a gain: the curve falls (before any gain: a miss, below)
                return None
            if self._pays(reading, before):
                self._misses, self._paid = 0, True
            elif not self._paid or reading.rate < (1 + self.rules.gain) * before.rate:
                # (past a gain, a level above ``gain`` but not clearly so does not end the scan: look on)
                self._misses += 1
                # (past a gain too, a look past a flat level where the job has room: llama.cpp, 16 slots,
                # new rows, read 4 at 1.2x over 2 in one scan, 8 no more than 4, and 16 at 1.34x)
                patience = self.rules.patience_past_gain if self._paid else self.rules.patience
                if not self._room(2 * reading.limit):
                    patience = 1
                deep = self._paid and reading.p95 > self.rules.p95_factor * before.p95  # (before: patience)
                if self._misses >= patience or deep:
                    return None
        return min(self.lanes_max, 2 * reading.limit)

    def floor(self, knee: Reading) -> dict[int, tuple[float, float]]:
        """The latency at the knee without a queue, as (mean, standard error) per level: the knee and
        the levels below it that read the same (on a K-slot server all of them; on a batching server,
        whose latency grows with the batch, none)."""
        same = [knee]
        for r in sorted((r for r in self.points if r.limit < knee.limit), key=lambda r: -r.limit):
            if abs(r.latency / knee.latency - 1) > 2 * self._apart(r, knee):
                break
            same.append(r)
        return {r.limit: (r.latency, r.cv * r.latency / math.sqrt(r.samples)) for r in same}

    def _room(self, level: int) -> bool:
        """The job is long enough to look at ``level`` past a flat step (see ``ScanRules.look_rows``)."""
        left = self.rows_left()
        return left is None or left >= self.rules.look_rows * level

    def _pays(self, r: Reading, than: Reading) -> bool:
        """``r`` is clearly faster than ``than``: by ``gain``, and by twice their readings' error."""
        return r.rate >= (1 + max(self.rules.gain, 2 * self._apart(r, than))) * than.rate

    def _error(self, r: Reading) -> float:
        """One reading's relative standard error."""
        return max(r.cv, self.cv) / math.sqrt(r.samples)

    def _apart(self, a: Reading, b: Reading) -> float:
        """The relative standard error of the difference of two readings."""
        return math.hypot(self._error(a), self._error(b))


class Knee:
    """When to scan, and what scanning has cost so far (seconds on the controller's clock)."""

    def __init__(
        self,
        *,
        lanes_max: int,
        now: float,
        samples: int = 16,
        rules: ScanRules | None = None,
        rows_left: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.lanes_max, self.samples = lanes_max, samples
        self.rows_left = rows_left
        self.rules = rules or ScanRules()
        self.t0 = now
        self.scan: Scan | None = None
        self.spent = 0.0  #: seconds spent scanning, all scans together
        self.last_cost = 0.0  #: the last finished scan's duration
        self.last_end: float | None = None
        self.scans = 0  #: scans begun
        self.failures = 0  #: scans in a row cut short by errors (each doubles the wait for a periodic one)
        #: the work's latency cv, from the first scan's first level (a held level may be queued: it reads less)
        self.cv = 0.0

    @property
    def scanning(self) -> bool:
        return self.scan is not None

    def begin(self, start: int, now: float, baseline: Reading | None = None) -> int:
        """Start a scan at ``start`` (the level to measure first); with a ``baseline`` already measured
        there, the scan goes on at the next level up, which is returned."""
        self.scan = Scan(
            start=start,
            lanes_max=self.lanes_max,
            began=now,
            rules=self.rules,
            samples=self.samples,
            from_hold=baseline is not None,
            rows_left=self.rows_left,
        )
        self.scan.cv = self.scan.known_cv = self.cv
        self.scans += 1
        if baseline is None:
            return start
        nxt = self.scan.observe(baseline)
        return start if nxt is None else nxt

    def observe(self, reading: Reading, *, used: bool = True) -> int | None:
        """The next limit to measure, or None: the scan is over and ``finish`` gives the verdict."""
        assert self.scan is not None
        return self.scan.observe(reading, used=used)

    def finish(self, now: float, *, failed: bool = False) -> Verdict | None:
        """End the scan (done, or ``failed``: cut short by errors); None if it measured nothing."""
        scan, self.scan = self.scan, None
        if scan is None:
            return None
        self.cv = scan.cv
        self.failures = self.failures + 1 if failed else 0
        cost = max(0.0, now - scan.began)
        self.spent += cost
        self.last_cost, self.last_end = cost, now
        knee = scan.knee()
        if knee is None:
            return None
        if scan.from_hold and knee.limit == scan.start:
            return Verdict(knee.limit, None, None)
        ceiling = min((r.limit for r in scan.points if r.limit > knee.limit), default=None)
        return Verdict(knee.limit, scan.floor(knee), ceiling)

    def periodic_due(self, now: float, limit: int, window: float) -> bool:
        """A periodic re-scan now keeps every scan so far plus this one within ``budget`` of the time,
        and the last scan plus the time since within ``budget`` too (no bursts of saved-up scans).
        Its cost: the last scan's, and at least three of the controller's ``window`` (seconds)."""
        if self.scanning or limit >= self.lanes_max:
            return False
        budget = self.rules.budget
        cost = max(self.last_cost, 3 * window) * 2.0**self.failures
        quiet = self.last_end is None or now - self.last_end >= cost * (1 - budget) / budget
        return quiet and self.spent + cost <= budget * (now - self.t0)

    def after_change_allowed(self, now: float) -> bool:
        """A re-scan after a capacity change: not within ``gap`` last-scan durations of the last one."""
        if self.scanning:
            return False
        return self.last_end is None or now - self.last_end >= self.rules.gap * self.last_cost
