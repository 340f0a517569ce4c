"""A discrete-event model of a client obeying a ``LaneController`` against a K-slot server, on a fake clock.

The server serves ``slots`` requests at once, in arrival order, each for a
service time drawn from ``service`` (seconds); more in flight queue for a slot,
so their latency grows (as Ollama and llama.cpp behave). ``set_slots`` changes
K at a given time; ``queue_limit`` makes it answer 503 at once when that many
already wait; ``batching`` makes service slower as more are served together
(a vLLM-like server whose throughput still rises with the batch); ``curve``
gives any throughput curve instead: ``curve(n)`` = how many times one request's
throughput the server gets with ``n`` in service (a request takes
``service x n / curve(n)``), e.g. a flat first step (CPU batching: 2 in flight
no faster than 1, 8 four times as fast), a plateau, a curve that falls. The client
keeps ``controller.limit`` requests in flight. Simulated minutes run in
milliseconds of real time.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from batchd.run.lanes import LaneController, Outcome, Ticket


@dataclass
class Sim:
    slots: int
    service: Callable[[random.Random], float] = lambda rng: rng.uniform(0.05, 0.2)
    queue_limit: int | None = None
    batching: float = 0.0  #: service time x (1 + batching * in_service)
    curve: Callable[[int], float] | None = None  #: throughput with n in service, x one request's
    seed: int = 1
    now: float = 0.0
    completed: list[tuple[float, float]] = field(default_factory=list)  #: (end time, latency)
    busy_answers: int = 0
    #: (time, limit) at every change, and (time, in flight) at every start
    in_flight_series: list[tuple[float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._events: list[tuple[float, int, str, object]] = []
        self._seq = 0
        self._waiting: deque[tuple[float, Ticket]] = deque()
        self._serving = 0
        self._schedule: list[tuple[float, int]] = []
        self.client_in_flight = 0

    def clock(self) -> float:
        return self.now

    def set_slots(self, slots: int, at: float) -> None:
        self._schedule.append((at, slots))
        self._push(at, "slots", slots)

    def _push(self, t: float, kind: str, data: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, kind, data))

    def _fill(self, ctl: LaneController) -> None:
        while self.client_in_flight < ctl.limit:
            ticket = ctl.start()
            self.client_in_flight += 1
            self.in_flight_series.append((self.now, self.client_in_flight))
            if self.queue_limit is not None and len(self._waiting) >= self.queue_limit:
                self.busy_answers += 1
                self._push(self.now + 0.001, "busy", ticket)
                continue
            self._waiting.append((self.now, ticket))
            self._serve()

    def _serve(self) -> None:
        while self._waiting and self._serving < self.slots:
            started, ticket = self._waiting.popleft()
            self._serving += 1
            took = self.service(self.rng) * (1 + self.batching * self._serving)
            if self.curve is not None:
                took *= self._serving / self.curve(self._serving)
            self._push(self.now + took, "done", (started, ticket))

    def run(self, ctl: LaneController, until: float) -> None:
        self._fill(ctl)
        while self._events and self._events[0][0] <= until:
            t, _, kind, data = heapq.heappop(self._events)
            self.now = t
            if kind == "slots":
                self.slots = int(data)  # type: ignore[call-overload]
                self._serve()
            elif kind == "busy":
                self.client_in_flight -= 1
                ctl.done(data, Outcome.BUSY)  # type: ignore[arg-type]
            else:
                started, ticket = data  # type: ignore[misc]
                self._serving -= 1
                self.client_in_flight -= 1
                self.completed.append((t, t - started))
                ctl.done(ticket, Outcome.OK)
                self._serve()
            self._fill(ctl)
        self.now = until

    # -- what the tests read ------------------------------------------------------------------

    def rate(self, start: float, end: float) -> float:
        return sum(1 for t, _ in self.completed if start < t <= end) / (end - start)

    def p95(self, start: float = 0.0, end: float = float("inf")) -> float:
        lat = sorted(lat for t, lat in self.completed if start < t <= end)
        return lat[int(0.95 * (len(lat) - 1))]

    def time_above(self, ctl: LaneController, level: int, start: float, end: float) -> float:
        """Seconds within [start, end] during which the limit was above ``level``."""
        limit, t_prev, total = ctl.tuning.lanes_min, start, 0.0
        points = [(c.at, c.new) for c in ctl.changes]
        for at, new in points:
            if at <= start:
                limit = new
                continue
            if at > end:
                break
            if limit > level:
                total += at - t_prev
            limit, t_prev = new, at
        if limit > level:
            total += end - t_prev
        return total
