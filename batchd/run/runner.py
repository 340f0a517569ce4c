"""Runs one job: N lanes pull requests in input order, call the backend, retry, record.

Each lane keeps its own ``Conversation`` (``context``); all lanes share one ``ContextBudget``. Results
go to the journal in batches (``FLUSH_SECONDS``/``FLUSH_ROWS``; a crash re-runs one unflushed batch). A
backend that is down pauses every lane (``outage.Gate``) without burning attempts; one request's calls
and retries are ``attempts.Attempts``. A monitor task reads VRAM (``vram``), pauses or resumes lanes per
``VramPolicy`` and samples progress into the journal. Embedding lines have lanes of their own (``embedlanes``).

Every task of the run (lanes, feeder, monitor, control) is ``aio.supervised``: an exception it did
not handle fails the job with its text at once, no task is left waiting on a dead one. A journal
write the disk refuses pauses the work like an outage (``record.Recorder``); ``wait_for_disk`` off
(``--once``): the run ends and ``run()`` raises the ``StorageError``.

Stop, cancel, yielding and fatal errors are handled in one place; a lane looks at them before it takes a
request (``_halted``). A *control* task polls for a cancel every ``CONTROL_SECONDS``, asks ``yield_to``
every ``YIELD_SECONDS`` (a higher-ranked job waits: in-flight requests finish and are recorded, no new one
starts) and starts the grace clock at a stop; cancel, a fatal error or the grace period's end set
``_abort``, which ends every lane at once, wherever it waits. Requests taken and not yet recorded
(``_taken``) go back to ``queued`` at the end; ``Journal.end_run`` decides the job's state.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import cast

import structlog

from batchd.aio import Sleep, supervised, wait_first
from batchd.backends.base import Backend
from batchd.config import Settings
from batchd.errors import BackendUnavailable, JobError, StorageError, TransientError
from batchd.journal import Job, Journal, Outcome, ReqState, Request, RunOutcome
from batchd.metrics import JobMetrics
from batchd.run.attempts import Attempts
from batchd.run.context import ContextBudget, Conversation
from batchd.run.embedlanes import EmbedLanes, lanes_changed
from batchd.run.lanes import Change, LaneController, LaneTuning
from batchd.run.outage import Gate
from batchd.run.record import Recorder
from batchd.run.serverside import ServerSide
from batchd.run.stall import StallWatch
from batchd.run.vram import GpuMemory, OllamaPsSource, VramPolicy, VramWatch, pick_source
from batchd.storage import DiskWatch

log = structlog.get_logger("batchd.runner")

#: how often the monitor wakes; the VRAM source sets its own pace, samples go every SAMPLE_SECONDS
MONITOR_TICK = 0.25
SAMPLE_SECONDS = 2.0
METRICS_SECONDS = 2.0
#: how often the control task looks for a cancel in the journal (a cancel is seen within this)
CONTROL_SECONDS = 0.25
YIELD_SECONDS = 0.25  # how often it asks whether it must yield (``yield_to``; ``run.turns``)


class JobRunner:
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
        disk: DiskWatch | None = None,
        wait_for_disk: bool = True,
        yield_to: Callable[[], str | None] | None = None,
    ) -> None:
        self.settings, self.journal, self.backend, self.job = settings, journal, backend, job
        self.stop, self.sleep, self.clock = stop, sleep, clock
        self.metrics = JobMetrics.from_state(job.metrics.get("state", {})) if job.metrics else JobMetrics()
        low, high = settings.backend.lane_bounds()
        #: how many requests may be in flight: pinned (``lanes = N``) or adaptive (``lanes = "auto"``)
        self.control = LaneController(LaneTuning(lanes_min=low, lanes_max=high), clock=clock)
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
        self.policy = VramPolicy(high_water=settings.vram.high_water, low_water=settings.vram.low_water, lanes=high)
        self.budget: ContextBudget | None = None
        #: the server's version, request hygiene and reloads (set once the context is pinned)
        self.server: ServerSide | None = None
        self._lanes_changed = asyncio.Event()
        self._closing = False  #: the feeder is done: every row is queued in memory
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
        #: one request's calls and retries
        self.attempts = Attempts.for_job(
            settings,
            job,
            backend=backend,
            metrics=self.metrics,
            control=self.control,
            gate=self.gate,
            lanes=self.lanes,
            rng=rng or random.Random(),
            wait_gate=self._wait_gate,
            on_fatal=self._fail,
            sleep=sleep,
            clock=clock,
        )
        self.fatal: JobError | None = None
        self.cancelled = False
        #: why the job yields to a higher-ranked one (``schedule.Why``): like a stop, with no grace clock
        self.yield_to, self.preempted = yield_to, cast("str | None", None)
        #: set when in-flight work is abandoned: cancel, a fatal error, the stop's grace period over
        self._abort = asyncio.Event()
        #: when the stop was seen (the grace period counts from here)
        self.stopped_at: float | None = None
        #: taken from the journal (marked running) and not yet recorded: back to queued at the end
        self._taken: set[int] = set()
        #: the journal's writes; a refused one pauses the work (see ``record``)
        self.disk = disk or DiskWatch(clock=clock)
        self.wait_for_disk = wait_for_disk
        self.recorder = Recorder(
            journal=journal,
            job_id=job.id,
            metrics=self.metrics,
            disk=self.disk,
            sleep=sleep,
            clock=clock,
            on_blocked=self._disk_blocked,
        )
        #: the journal refused a write and this run does not wait for the disk (``--once``)
        self.storage_failed: StorageError | None = None
        #: a task of the run that died of an exception it did not handle: (task name, exception)
        self.crashed: tuple[str, BaseException] | None = None
        #: no request finished for too long: the run ends and the daemon starts it again from the journal
        self.stall = StallWatch(
            clock=clock, configured=settings.watchdog.stall_seconds, latencies=lambda: self.metrics.latencies
        )
        self.restarting, self.done, self.failed = False, 0, 0
        self.embed_lanes = EmbedLanes(  # embedding lines' own lanes and controller, started by the first one
            settings=settings.backend,
            embeds=self.attempts.embeds,
            recorder=self.recorder,
            stall=self.stall,
            halted=self._halted,
            finish=self._finish,
            abort=self._abort,
            crash=self._crash,
        )

    # -- the job ---------------------------------------------------------------------

    async def run(self) -> RunOutcome:
        """One run of the job; ``Journal.end_run`` turns the outcome into the job's next state."""
        started = self.clock()
        own_source = self.vram_source is None
        source = self.vram_source or pick_source(self.settings, self.backend)
        counts = self.journal.counts(self.job.id)
        self._base_counts = (counts.get(ReqState.DONE.value, 0), counts.get(ReqState.FAILED.value, 0))
        todo = counts.get(ReqState.QUEUED.value, 0) + counts.get(ReqState.RUNNING.value, 0)  # (a short job's scan
        self.control.rows_left = lambda: max(0, todo - self.done - self.failed)  # looks past fewer flat steps)
        monitor = supervised(self._monitor(source), "monitor", self._crash)
        control = supervised(self._control(), "control", self._crash)
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
                self.attempts.server = self.server
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
            await asyncio.gather(monitor, control, return_exceptions=True)  # their failures went to _crash
            if own_source:
                source.close()
            self.gate.cancel()
            self.metrics.busy_seconds += self.clock() - started
            if self.budget is not None and self.metrics.conversation_not_paying is not None:
                self.budget.check_paying(lanes=self.lanes, final=True)
            self._sample()
            self.recorder.close()  # the retries end; these last writes are tried once more all the same
            self.flush(force=True)
            if self._taken and self.recorder.write(lambda: self.journal.requeue(self.job.id, sorted(self._taken))):
                self._taken.clear()  # in flight or in the lanes' queue when the run ended: not lost, not done
        if self.storage_failed is not None:
            raise self.storage_failed  # the job stays running in the journal: the next run starts over there
        if self.fatal is not None:
            return RunOutcome.FAILED
        if self.cancelled:
            return RunOutcome.CANCELLED
        if self.stop.is_set() or self.restarting or self.preempted is not None:
            return RunOutcome.INTERRUPTED
        return RunOutcome.COMPLETED

    def _halted(self) -> bool:
        """No new request is taken: stop, cancel, a fatal error, or yielding to another job."""
        return self.stop.is_set() or self.cancelled or self.fatal is not None or self.preempted is not None

    def _fail(self, exc: JobError) -> None:
        """The whole job cannot go on (model gone, credentials refused): end every lane now."""
        if self.fatal is None:
            self.fatal = exc
            log.error("job_failed_fast", job_id=self.job.id, code=exc.code, error=exc.message)
        self._abort.set()

    def _crash(self, name: str, exc: BaseException) -> None:
        if self.crashed is None:
            self.crashed = (name, exc)
            log.error("runner_task_failed", job_id=self.job.id, task=name, error=repr(exc))
        self._fail(JobError(f"{name} failed: {exc!r}", job_id=self.job.id))

    def _disk_blocked(self, exc: StorageError) -> None:
        """The journal refused a write: the lanes pause (``recorder.ok``); ``--once`` ends the run."""
        if not self.wait_for_disk and self.storage_failed is None and (episode := self.disk.waiting()):
            self.storage_failed = StorageError(episode.exit_text(), path=exc.path, full=exc.full, reason=exc.reason)
            self._abort.set()

    def _check_cancel(self) -> None:
        if not self.cancelled and self.journal.cancel_requested(self.job.id):
            self.cancelled = True
            log.info("job_cancelling", job_id=self.job.id)
            self._abort.set()

    async def _control(self) -> None:
        """Cancel within CONTROL_SECONDS in every state; the stop's grace period from its moment."""
        stop = asyncio.ensure_future(self.stop.wait())
        ask_at = self.clock() + YIELD_SECONDS
        try:
            while not self._abort.is_set():
                self._check_cancel()
                if self.stop.is_set():
                    break
                if self.yield_to is not None and self.preempted is None and self.clock() >= ask_at:
                    ask_at = self.clock() + YIELD_SECONDS
                    if (reason := self.yield_to()) is not None:
                        self.preempted = reason
                        self._wake_lanes()
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
        self.embed_lanes.wake()

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
            meta = {**self.job.meta, "num_ctx": self.num_ctx}
            self.recorder.write(lambda: self.journal.update_job(self.job.id, meta=meta))
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
        lanes = [supervised(self._lane(i, queue), f"lane {i}", self._crash) for i in range(self.lanes)]
        feeder = supervised(self._feed(queue), "feeder", self._crash)
        try:
            await wait_first(asyncio.wait(lanes), self._abort.wait())
            await wait_first(self.embed_lanes.wait(), self._abort.wait())
        finally:
            for task in (*lanes, feeder):
                task.cancel()  # a no-op for the ones already done
            await asyncio.gather(*lanes, feeder, return_exceptions=True)  # their failures went to _crash
            await self.embed_lanes.aclose()

    async def _feed(self, queue: asyncio.Queue[Request | None]) -> None:
        chunk = max(64, self.lanes * 16)
        try:
            while not self._should_stop():
                if self.recorder.blocked:  # no new requests while the journal cannot record their answers
                    await self.recorder.wait_ok(self._abort)
                    continue
                batch = self._take(chunk)
                if batch is None:
                    continue  # the journal refused: paused until it takes writes again
                if not batch:
                    break
                self._taken.update(r.seq for r in batch)
                for req in batch:
                    if self._should_stop():
                        break
                    await (self.embed_lanes.put(req) if self.embed_lanes.takes(req) else queue.put(req))
        finally:
            self._closing = True
            self._wake_lanes()
        for _ in range(self.lanes):
            await queue.put(None)
        await self.embed_lanes.close()  # after: a full embedding queue whose lanes left must not hold the chat lanes

    def _take(self, n: int) -> list[Request] | None:
        taken: list[Request] = []
        return taken if self.recorder.write(lambda: taken.extend(self.journal.take_pending(self.job.id, n))) else None

    def _should_stop(self) -> bool:
        if self.recorder.due():
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
            if self.recorder.blocked:  # the journal cannot record an answer now: start nothing new
                await self.recorder.wait_ok(self._abort)
                continue
            req = await queue.get()
            if req is None:  # every row is taken: parked lanes may leave too
                self._drained = True
                self._wake_lanes()
            if req is None or self._halted():
                return  # a request taken but not started stays in _taken: back to queued at the end
            self.in_flight += 1
            self.stall.lane(index, f"asking request {req.seq}")
            try:
                outcome = await self.attempts.execute(req, conv, index)
            finally:
                self.in_flight -= 1
                self.stall.lane(index, "between requests")
            if outcome is not None:  # None: stopped while the backend was away: back to queued at the end
                self._finish(req, outcome)

    def _finish(self, req: Request, outcome: Outcome) -> None:
        """A request of either pool has its outcome: to the recorder (in memory until the journal took it)."""
        self._taken.discard(req.seq)
        self.recorder.add(outcome)
        self.stall.progressed()
        ok = outcome.state is ReqState.DONE
        self.metrics.count_outcome(ok, (outcome.error or {}).get("code"))
        self.done, self.failed = self.done + ok, self.failed + (not ok)

    # -- how many lanes ----------------------------------------------------------------------

    def _lanes_moved(self, change: Change) -> None:
        """The controller changed the limit: log it, record it, let parked lanes go or lanes park."""
        lanes_changed(self.job.id, change)
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
            self._check_stall(now)
            await self.sleep(self.monitor_tick)

    def _check_stall(self, now: float) -> None:
        """The progress watchdog (``stall``): a stalled run ends, and the daemon runs it again."""
        excused = not self.gate.is_open or self.recorder.blocked or self._halted()
        if self.stall.check(work_left=bool(self._taken) or not self._closing, excused=excused, job_id=self.job.id):
            self.restarting = True
            self._abort.set()

    def _apply_policy(self) -> None:
        if self.budget is not None:
            self.budget.pressure = self.policy.pressure
        if self.auto:  # each step of the policy (on, and again while it lasts) is one back-off
            self.control.pressure(self.policy.pressure, again=self.control.pressure_on)
        self.embed_lanes.pressure(self.policy.pressure)
        self._set_active()
        self._wake_lanes()

    def _sample(self) -> None:
        done, failed = self._base_counts
        self.recorder.write(
            lambda: self.journal.add_sample(
                self.job.id,
                done=done + self.done,
                failed=failed + self.failed,
                ctx_tokens=self.metrics.ctx_current,
                vram_used=self.metrics.vram_used,
                trims=sum(self.metrics.trims.values()),
                lanes=self.active_lanes,
            )
        )

    # -- persistence -------------------------------------------------------------------------

    def flush(self, force: bool = False) -> bool:
        """Outcomes and counters to the journal (``record.Recorder``); False when the disk refused."""
        return self.recorder.flush(force)
