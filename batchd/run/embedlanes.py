"""Embedding lines' own lanes: their queue, lane tasks and ``LaneController``, apart from the chat lanes.

An embedding call's latency and the server's room for it have nothing in common with chat (a
mixed file read by one controller would mix milliseconds with seconds), so the runner's feeder
hands each embedding line to ``EmbedLanes.put`` and the chat lanes never see one. The first line
starts the pool: its lanes, its controller, ``metrics.json``'s ``embed_lanes`` and
``embed_lanes_series`` (a pure-chat job has neither). A lane here is one line in flight; the
lines in flight at one moment share calls (``embeds.Packer``), so the limit is also the most lines
one call can carry, and the controller's sample is one line, from its submission to its vectors.
``backend.embed_lanes`` pins the limit or (``"auto"``) lets the controller find it within
``embed_lanes_min`` / ``embed_lanes_max``; each change logs ``lanes_changed`` with ``pool="embed"``.
Lanes over the limit park between lines, as the chat lanes do; VRAM pressure backs an auto pool off too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from batchd.aio import supervised
from batchd.config import BackendSettings
from batchd.intake.endpoints import Endpoint, endpoint_of
from batchd.journal import Outcome, Request
from batchd.run.embeds import EmbedAttempts
from batchd.run.lanes import Change, LaneController, LaneTuning
from batchd.run.record import Recorder
from batchd.run.stall import StallWatch

log = structlog.get_logger("batchd.runner")


def embed_tuning(low: int, high: int) -> LaneTuning:
    """The controller's constants for packed calls. A call of N lines costs about ``a + b*N``, so a line's
    latency rises with the call even with no queue, while throughput, N / (a + b*N), still does: at
    ``ratio`` times the floor it is ``1 - 1/ratio`` of the best. So the pool grows while a line takes under
    2x the floor (half the best or more), backs off above 4x (3/4 of it: more would buy little) to what
    3x would be, and in between grows only where the last step paid in throughput. A window is at least
    512 lines (8 calls of 64: one call slowed by a journal commit or a busy box is no reading)."""
    return LaneTuning(
        lanes_min=low, lanes_max=high, min_samples=512, grow_ratio=2.0, shrink_ratio=4.0, target_ratio=3.0
    )


def lanes_changed(job_id: str, change: Change, pool: str | None = None) -> None:
    """The ``lanes_changed`` event of either pool (the chat lanes' has no ``pool`` field)."""
    log.info(
        "lanes_changed",
        job_id=job_id,
        **{"from": change.old, "to": change.new},
        reason=change.reason.value,
        latency_ms=round(change.latency * 1000, 1) if change.latency is not None else None,
        floor_ms=round(change.floor * 1000, 1) if change.floor is not None else None,
        rate=round(change.rate, 2) if change.rate is not None else None,
        **({"pool": pool} if pool else {}),
    )


class EmbedLanes:
    """``put`` an embedding line (the feeder), ``close`` at the end of the input, ``wait`` for the lanes."""

    def __init__(
        self,
        *,
        settings: BackendSettings,
        embeds: EmbedAttempts,
        recorder: Recorder,
        stall: StallWatch,
        halted: Callable[[], bool],
        finish: Callable[[Request, Outcome], None],
        abort: asyncio.Event,
        crash: Callable[[str, BaseException], None],
    ) -> None:
        low, high = settings.embed_lane_bounds()
        self.control = LaneController(embed_tuning(low, high), clock=recorder.clock)
        self.control.on_change = self._moved
        self.auto = not self.control.fixed
        self.lanes = high  #: lane tasks; those at or above ``control.limit`` park
        self.job_id, self.metrics, self.embeds, self.recorder, self.stall = (
            recorder.job_id,
            embeds.metrics,
            embeds,
            recorder,
            stall,
        )
        self.halted, self.finish, self.abort, self.crash = halted, finish, abort, crash
        self.pressure_on = False
        self.in_flight = 0
        self.queue: asyncio.Queue[Request | None] = asyncio.Queue(maxsize=2 * high)
        self.tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._drained = False

    @staticmethod
    def takes(req: Request) -> bool:
        return endpoint_of(req.url) is Endpoint.EMBEDDINGS

    async def put(self, req: Request) -> None:
        if not self.tasks:
            self._start()
        await self.queue.put(req)

    async def close(self) -> None:
        """Every line is queued: each lane gets an end mark (a pool never started has none to get)."""
        for _ in self.tasks:
            await self.queue.put(None)

    async def wait(self) -> None:
        if self.tasks:
            await asyncio.wait(self.tasks)

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()  # a no-op for the ones already done
        await asyncio.gather(*self.tasks, return_exceptions=True)  # their failures went to crash

    def pressure(self, on: bool) -> None:
        """The VRAM policy's signal, as the chat controller hears it (each further step backs off again)."""
        if self.tasks and self.auto:
            self.control.pressure(on, again=self.pressure_on)
        self.pressure_on = on

    def _start(self) -> None:
        if self.auto:
            self.embeds.control = self.control
        self.metrics.note_embed_lanes(self.control.limit, "start", "auto" if self.auto else "fixed")
        self.tasks = [supervised(self._lane(i), f"embed lane {i}", self.crash) for i in range(self.lanes)]

    def _moved(self, change: Change) -> None:
        lanes_changed(self.job_id, change, pool="embed")
        self.metrics.note_embed_lanes(change.new, change.reason.value, "auto")
        self.wake()

    def wake(self) -> None:
        """Parked lanes look again: the limit moved, the queue drained, or the job halts."""
        self._changed.set()
        self._changed = asyncio.Event()
        if self.halted():  # a lane waiting for a line must see the halt, and the feeder must not wait for lanes
            while not self.queue.empty():  # that left: lines taken, never started, go back to queued at the end
                self.queue.get_nowait()
            for _ in self.tasks:
                self.queue.put_nowait(None)

    async def _lane(self, index: int) -> None:
        while True:
            # over the limit: park between lines (a drained queue lets parked lanes leave)
            while index >= self.control.limit and not self._drained and not self.halted():
                await self._changed.wait()
            if index >= self.control.limit or self.halted():
                return
            if self.recorder.blocked:  # the journal cannot record an answer now: start nothing new
                await self.recorder.wait_ok(self.abort)
                continue
            req = await self.queue.get()
            if req is None:  # every line is taken: parked lanes may leave too
                self._drained = True
                self.wake()
            if req is None or self.halted():
                return  # taken but not started: the runner puts it back to queued at the end
            self.in_flight += 1
            self.stall.lane(index, f"embedding request {req.seq}", pool="embed lane")
            try:
                outcome = await self.embeds.execute(req)
            finally:
                self.in_flight -= 1
                self.stall.lane(index, "between requests", pool="embed lane")
            if outcome is not None:  # None: stopped while the backend was away
                self.finish(req, outcome)
