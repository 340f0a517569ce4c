"""Runs one job: N lanes pull requests in input order, call the backend, retry, record.

Each lane keeps its own ``Conversation`` (history and trimming, see
``context``); all lanes share one ``ContextBudget``. Results are written to the
journal in batches (every ``FLUSH_SECONDS`` or ``FLUSH_ROWS``); a crash loses at
most one unflushed batch, which runs again. A backend that is down pauses
every lane (``outage.Gate``) without burning attempts; one request's calls and
retries (5xx/503/timeouts: backoff with jitter up to ``backend.max_attempts``; a
missing model fails the job at once) are ``attempts``, mixed in. A monitor
task reads VRAM (``vram``), pauses or resumes lanes per ``VramPolicy`` and
samples progress into the journal.

Stop, cancel and fatal errors are handled in one place. A lane looks at them
before it takes a request (``_halted``). A *control* task polls the journal for
a cancel every ``CONTROL_SECONDS`` and starts the grace clock at the moment of
a stop; cancel, a fatal error or the end of the grace period set ``_abort``,
which ends every lane at once, wherever it waits (the backend, a backoff, a
call in flight). Every request taken from the journal and not yet recorded is
in ``_taken``; at the end they all go back to ``queued``, and
``Journal.end_run`` decides the job's state under its guard.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from batchd.aio import Sleep, wait_first
from batchd.backends.base import Backend
from batchd.config import Settings
from batchd.errors import BackendUnavailable, JobError, TransientError
from batchd.journal import Job, Journal, Outcome, ReqState, Request, RunOutcome
from batchd.metrics import JobMetrics
from batchd.run.attempts import Attempts
from batchd.run.context import ContextBudget, Conversation
from batchd.run.lanes import Change, LaneController
from batchd.run.outage import Gate
from batchd.run.replies import checker_for
from batchd.run.serverside import ServerSide
from batchd.run.vram import GpuMemory, OllamaPsSource, VramPolicy, VramWatch, pick_source

log = structlog.get_logger("batchd.runner")

FLUSH_SECONDS = 0.25
FLUSH_ROWS = 512
#: how often the monitor wakes; the VRAM source sets its own pace, samples go every SAMPLE_SECONDS
MONITOR_TICK = 0.25
SAMPLE_SECONDS = 2.0
METRICS_SECONDS = 2.0
#: how often the control task looks for a cancel in the journal (a cancel is seen within this)
CONTROL_SECONDS = 0.25


class JobRunner(Attempts):
    def __init__(
        self,
        *,
        settings: Settings,
        journal: Journal,
        backend: Backend,
        job: Job,
        stop: asyncio.Event,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        vram_source: GpuMemory | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.backend = backend
        self.job = job
        self.stop = stop
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()
        self.metrics = JobMetrics.from_state(job.metrics.get("state", {})) if job.metrics else JobMetrics()
        self.prefix: dict[str, Any] | None = orjson.loads(job.prefix_json) if job.prefix_json else None
        low, high = settings.backend.lane_bounds()
        #: how many requests may be in flight: pinned (``lanes = N``) or adaptive (``lanes = "auto"``)
        self.control = LaneController(lanes_min=low, lanes_max=high, clock=clock)
        self.control.on_change = self._lanes_moved
        self.auto = not self.control.fixed
        #: lane tasks: one per request that may ever be in flight; those above the limit park
        self.lanes = high
        #: lanes allowed to take new requests (the controller or the VRAM policy lowers it; the others park)
        self.active_lanes = self.control.limit
        self.in_flight = 0
        self.metrics.lanes = self.active_lanes
        self.metrics.lanes_min = min(self.metrics.lanes_min, self.active_lanes) if job.metrics else self.active_lanes
        self.metrics.lanes_mode = "auto" if self.auto else "fixed"
        self.metrics.note_lanes(self.active_lanes, "start")
        self.vram_source = vram_source
        self.policy = VramPolicy(
            high_water=settings.vram.high_water, low_water=settings.vram.low_water, lanes=self.lanes
        )
        self.budget: ContextBudget | None = None
        #: the server's version, request hygiene and reloads (set once the context is pinned)
        self.server: ServerSide | None = None
        self._lanes_changed = asyncio.Event()
        self._drained = False  #: a lane met the end of the queue: no row is left for a parked lane
        self._base_counts = (0, 0)
        self.monitor_tick = MONITOR_TICK
        self.gate = Gate(
            backend,
            sleep=sleep,
            clock=clock,
            metrics=self.metrics,
            max_wait=settings.backend.backoff_max_seconds or 30.0,
            on_fatal=self._fail,
        )
        self.num_ctx = settings.context.num_ctx or settings.context.num_ctx_cap
        self.replies = checker_for(self.prefix, job.pipeline_json)  # schema checks for pipeline jobs
        #: the pipeline (or the configuration) named conversation mode: no conversation_not_paying
        self._conversation_asked = (
            "mode" in settings.context.model_fields_set
            or orjson.loads(job.pipeline_json or "{}").get("mode") == "conversation"
        )
        self.fatal: JobError | None = None
        self.cancelled = False
        #: set when in-flight work is abandoned: cancel, a fatal error, the stop's grace period over
        self._abort = asyncio.Event()
        #: when the stop was seen (the grace period counts from here)
        self.stopped_at: float | None = None
        #: taken from the journal (marked running) and not yet recorded: back to queued at the end
        self._taken: set[int] = set()
        self._pending: list[Outcome] = []
        self._last_flush = clock()
        self._metrics_saved = self._last_flush
        self.done = 0
        self.failed = 0

    # -- the job ---------------------------------------------------------------------

    async def run(self) -> RunOutcome:
        """One run of the job; ``Journal.end_run`` turns the outcome into the job's next state."""
        started = self.clock()
        own_source = self.vram_source is None
        source = self.vram_source or pick_source(self.settings, self.backend)
        counts = self.journal.counts(self.job.id)
        self._base_counts = (counts.get(ReqState.DONE.value, 0), counts.get(ReqState.FAILED.value, 0))
        monitor = asyncio.create_task(self._monitor(source))
        control = asyncio.create_task(self._control())
        try:
            await self._pin_context()
            if not self._halted():
                self.server = ServerSide(
                    backend=self.backend,
                    metrics=self.metrics,
                    job_id=self.job.id,
                    model=self.job.model or self.settings.backend.model,
                    num_ctx=self.num_ctx,
                )
                start = asyncio.ensure_future(self.server.start())
                await wait_first(start, self._abort.wait())
                if not start.done():
                    start.cancel()
                elif (failed := start.exception()) is not None:
                    if not isinstance(failed, JobError):
                        raise failed
                    self._fail(failed)  # the version probe met a refusal: model gone, credentials
            if not self._halted():
                await self._run_lanes()
        finally:
            control.cancel()
            monitor.cancel()
            ended = await asyncio.gather(monitor, control, return_exceptions=True)
            for task_end in ended:
                if isinstance(task_end, Exception):
                    log.error("monitor_failed", job_id=self.job.id, error=repr(task_end))
            if own_source:
                source.close()
            self.gate.cancel()
            self.metrics.busy_seconds += self.clock() - started
            if self.budget is not None and self.metrics.conversation_not_paying is not None:
                self.budget.check_paying(lanes=self.lanes, final=True)
            self._sample()
            self.flush(force=True)
            if self._taken:  # in flight or in the lanes' queue when the run ended: not lost, not done
                self.journal.requeue(self.job.id, sorted(self._taken))
                self._taken.clear()
        if self.fatal is not None:
            return RunOutcome.FAILED
        if self.cancelled:
            return RunOutcome.CANCELLED
        if self.stop.is_set():
            return RunOutcome.INTERRUPTED
        return RunOutcome.COMPLETED

    def _halted(self) -> bool:
        """No new request is taken: stop, cancel or a fatal error."""
        return self.stop.is_set() or self.cancelled or self.fatal is not None

    def _fail(self, exc: JobError) -> None:
        """The whole job cannot go on (model gone, credentials refused): end every lane now."""
        if self.fatal is None:
            self.fatal = exc
            log.error("job_failed_fast", job_id=self.job.id, code=exc.code, error=exc.message)
        self._abort.set()

    def _check_cancel(self) -> None:
        if not self.cancelled and self.journal.cancel_requested(self.job.id):
            self.cancelled = True
            log.info("job_cancelling", job_id=self.job.id)
            self._abort.set()

    async def _control(self) -> None:
        """Cancel within CONTROL_SECONDS in every state; the stop's grace period from its moment."""
        stop = asyncio.ensure_future(self.stop.wait())
        try:
            while not self._abort.is_set():
                self._check_cancel()
                if self.stop.is_set():
                    break
                await wait_first(self.sleep(CONTROL_SECONDS), stop, self._abort.wait())
            if self._abort.is_set():
                return
            self.stopped_at = self.clock()
            self._wake_lanes()
            grace = self.settings.shutdown_grace_seconds
            log.info("job_stopping", job_id=self.job.id, in_flight=self.in_flight, grace_seconds=grace)
            end = asyncio.ensure_future(self.sleep(grace))
            while not end.done() and not self._abort.is_set():
                await wait_first(end, self.sleep(CONTROL_SECONDS), self._abort.wait())
                self._check_cancel()
            if not self._abort.is_set():
                if self.in_flight:
                    log.warning("shutdown_grace_expired", job_id=self.job.id, in_flight=self.in_flight)
                self._abort.set()
            end.cancel()
        finally:
            stop.cancel()

    def _wake_lanes(self) -> None:
        self._lanes_changed.set()
        self._lanes_changed = asyncio.Event()

    async def _pin_context(self) -> None:
        """One num_ctx for the whole job: a different value would reload the model."""
        if "num_ctx" in self.job.meta:
            self.num_ctx = int(self.job.meta["num_ctx"])
        else:
            while True:
                try:
                    trained = await self.backend.context_length(self.job.model or self.settings.backend.model)
                    break
                except BackendUnavailable as exc:
                    self.gate.close(str(exc))
                    if await self._wait_gate():
                        return
                except TransientError:
                    trained = None
                    break
                except JobError as exc:
                    self._fail(exc)
                    return
            cap = self.settings.context.num_ctx_cap
            self.num_ctx = self.settings.context.num_ctx or min(trained or cap, cap)
            self.journal.update_job(self.job.id, meta={**self.job.meta, "num_ctx": self.num_ctx})
        self.metrics.num_ctx = self.num_ctx

    async def _wait_gate(self) -> bool:
        """Wait for the backend; True when the job must not go on (stop, cancel, fatal)."""
        await wait_first(self.gate.wait(), self.stop.wait(), self._abort.wait())
        return not self.gate.is_open or self._halted()

    def new_conversation(self, lane: int) -> Conversation:
        if self.budget is None:
            self.budget = ContextBudget(settings=self.settings.context, num_ctx=self.num_ctx, metrics=self.metrics)
            self.budget.pressure = self.policy.pressure
            self.budget.counts_cache_only = self.server is not None and self.server.counts_cache_only
        return Conversation(
            settings=self.settings.context,
            num_ctx=self.num_ctx,
            metrics=self.metrics,
            mode=self.job.mode or self.settings.context.mode,
            budget=self.budget,
            lane=lane,
        )

    async def _run_lanes(self) -> None:
        queue: asyncio.Queue[Request | None] = asyncio.Queue(maxsize=self.lanes * 2)
        lanes = [asyncio.create_task(self._lane(i, queue)) for i in range(self.lanes)]
        feeder = asyncio.create_task(self._feed(queue))
        try:
            await wait_first(asyncio.wait(lanes), self._abort.wait())
        finally:
            for task in (*lanes, feeder):
                task.cancel()  # a no-op for the ones already done
            ended = await asyncio.gather(*lanes, feeder, return_exceptions=True)
        for end in ended:
            if isinstance(end, Exception):
                raise end

    async def _feed(self, queue: asyncio.Queue[Request | None]) -> None:
        chunk = max(64, self.lanes * 16)
        try:
            while not self._should_stop():
                batch = self.journal.take_pending(self.job.id, chunk)
                if not batch:
                    break
                self._taken.update(r.seq for r in batch)
                for req in batch:
                    if self._should_stop():
                        break
                    await queue.put(req)
        finally:
            self._wake_lanes()
        for _ in range(self.lanes):
            await queue.put(None)

    def _should_stop(self) -> bool:
        if self.clock() - self._last_flush > FLUSH_SECONDS:
            self.flush()
        return self._halted()

    async def _lane(self, index: int, queue: asyncio.Queue[Request | None]) -> None:
        conv = self.new_conversation(index)
        while True:
            # A lane over the limit (controller or VRAM policy) parks between requests, never mid-request.
            parked = False
            # (not when the feeder is done: a short job's rows are all queued before the first reply, and a
            # lane the controller lets in later must find them; they leave once a lane met the end)
            while index >= self.active_lanes and not self._drained and not self._halted():
                parked = True
                changed = self._lanes_changed
                await changed.wait()
            if index >= self.active_lanes or self._halted():
                return
            if parked:  # a lane owns its history: a revived lane starts a fresh conversation (prefix first)
                conv = self.new_conversation(index)
            req = await queue.get()
            if req is None:  # every row is taken: parked lanes may leave too
                self._drained = True
                self._wake_lanes()
            if req is None or self._halted():
                return  # a request taken but not started stays in _taken: back to queued at the end
            self.in_flight += 1
            try:
                outcome = await self._execute(req, conv, index)
            finally:
                self.in_flight -= 1
            if outcome is None:  # stopped while the backend was away: back to queued at the end
                continue
            self._taken.discard(req.seq)
            self._pending.append(outcome)
            self.metrics.count_outcome(outcome.state is ReqState.DONE, (outcome.error or {}).get("code"))
            if outcome.state is ReqState.DONE:
                self.done += 1
            else:
                self.failed += 1
            if len(self._pending) >= FLUSH_ROWS:
                self.flush()

    # -- how many lanes ----------------------------------------------------------------------

    def _lanes_moved(self, change: Change) -> None:
        """The controller changed the limit: log it, record it, let parked lanes go or lanes park."""
        log.info(
            "lanes_changed",
            job_id=self.job.id,
            **{"from": change.old, "to": change.new},
            reason=change.reason.value,
            latency_ms=round(change.latency * 1000, 1) if change.latency is not None else None,
            floor_ms=round(change.floor * 1000, 1) if change.floor is not None else None,
            rate=round(change.rate, 2) if change.rate is not None else None,
        )
        self.metrics.note_lanes(change.new, change.reason.value)
        self._set_active()

    def _set_active(self) -> None:
        # auto: the controller already heard the VRAM policy (pressure); pinned: the policy's count
        limit = self.control.limit if self.auto else min(self.policy.lanes, self.lanes)
        self.metrics.lanes = limit
        self.metrics.lanes_min = min(self.metrics.lanes_min, limit)
        if limit != self.active_lanes:
            self.active_lanes = limit
            self._wake_lanes()

    # -- monitoring ------------------------------------------------------------------------

    async def _monitor(self, source: GpuMemory) -> None:
        """Read VRAM at the source's pace, apply the policy, sample progress for the report."""
        # With NVML watching the card, /api/ps is still asked now and then: only it shows CPU offload.
        ps = OllamaPsSource(self.backend) if source.name != "ollama" and self.backend.kind == "ollama" else None
        watch = VramWatch(source=source, policy=self.policy, metrics=self.metrics, offload=ps)
        next_sample = self.clock() + SAMPLE_SECONDS  # a short job gets just the final sample
        while True:
            now = self.clock()
            if await watch.poll(now):
                self._apply_policy()
            if now >= next_sample:
                next_sample = now + SAMPLE_SECONDS
                self._sample()
            if self.server is not None:
                await self.server.poll(now)
            await self.sleep(self.monitor_tick)

    def _apply_policy(self) -> None:
        if self.budget is not None:
            self.budget.pressure = self.policy.pressure
        if self.auto:  # each step of the policy (on, and again while it lasts) is one back-off
            self.control.pressure(self.policy.pressure, again=self.control.pressure_on)
        self._set_active()
        self._wake_lanes()

    def _sample(self) -> None:
        done, failed = self._base_counts
        self.journal.add_sample(
            self.job.id,
            done=done + self.done,
            failed=failed + self.failed,
            ctx_tokens=self.metrics.ctx_current,
            vram_used=self.metrics.vram_used,
            trims=sum(self.metrics.trims.values()),
            lanes=self.active_lanes,
        )

    # -- persistence -------------------------------------------------------------------------

    def flush(self, force: bool = False) -> None:
        self._last_flush = self.clock()
        if self._pending:
            batch, self._pending = self._pending, []
            self.journal.record(self.job.id, batch)
        # Each journal write is an fsync that stalls every lane's event loop for a few ms,
        # so the counters (a restart continues from them) go at most every METRICS_SECONDS.
        if force or self._last_flush - self._metrics_saved >= METRICS_SECONDS:
            self._metrics_saved = self._last_flush
            self.journal.update_job(self.job.id, metrics={"state": self.metrics.to_state()})
