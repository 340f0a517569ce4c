"""The daemon: claim what is in the inbox, run jobs one at a time, publish outboxes.

``step()`` does one unit of work (publish one finished job, or run the next
queued one) so tests can drive it; ``run_once()`` drains and returns (``batchd
run --once``); ``run()`` is the long-running service loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from batchd.backends import make_backend
from batchd.backends.base import Backend
from batchd.claim import Claimer
from batchd.config import Settings
from batchd.errors import StorageError
from batchd.inbox import scan
from batchd.journal import Job, JobState, Journal
from batchd.outbox import Outbox
from batchd.runner import JobRunner

log = structlog.get_logger("batchd.daemon")


class Daemon:
    def __init__(self, *, settings: Settings, journal: Journal | None = None, backend: Backend | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.journal = journal or Journal(settings.state_dir / "journal.sqlite3")
        self._backend = backend
        self.sleep = sleep
        self.clock = clock
        self.claimer = Claimer(settings=settings, journal=self.journal)
        self.outbox = Outbox(settings=settings, journal=self.journal)
        self.stop = asyncio.Event()
        self.current: JobRunner | None = None
        self.jobs_done = 0

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = make_backend(self.settings)
        return self._backend

    # -- start-up -------------------------------------------------------------------

    def startup(self) -> None:
        """Bring the journal back to a consistent state after whatever stopped us."""
        recovered = self.journal.recover()
        if any(recovered.values()):
            log.info("journal_recovered", **recovered)
        self.claimer.finish_claims()
        for job in self.journal.jobs([JobState.INGESTING]):
            self.claimer.ingest(job.id)

    def claim_present(self) -> int:
        """Claim every candidate now in the inbox (the start-up scan)."""
        claimed = 0
        for cand in scan(self.settings.inbox, tuple(self.settings.watch.ignore)):
            if self.stop.is_set():
                break
            if self.claimer.claim(cand) is not None:
                claimed += 1
        return claimed

    # -- work ---------------------------------------------------------------------

    async def step(self) -> bool:
        """Publish one finished job or run the next queued one; False when idle."""
        for job in self.journal.jobs([JobState.FINALIZING]):
            self.publish(job)
            return True
        job = self.journal.next_job()
        if job is None or self.stop.is_set():
            return False
        if job.state is JobState.INGESTING:
            self.claimer.ingest(job.id)
            return True
        await self.run_job(job)
        return True

    def publish(self, job: Job) -> None:
        try:
            self.outbox.publish(job)
            self.jobs_done += 1
        except StorageError as exc:
            # Disk full or outbox unwritable: keep the job finalizing and try again later.
            log.error("publish_failed", job_id=job.id, input=job.input_name, error=exc.message)
            raise

    async def run_job(self, job: Job) -> str:
        structlog.contextvars.bind_contextvars(job_id=job.id, input=job.input_name)
        try:
            self.journal.update_job(job.id, state=JobState.RUNNING, started_at=job.started_at or time.time())
            fresh = self.journal.job(job.id)
            assert fresh is not None
            counts = self.journal.counts(job.id)
            log.info("job_started", requests=fresh.total, pending=counts.get("queued", 0), model=fresh.model,
                     mode=fresh.mode, lanes=self.settings.backend.lanes)
            runner = JobRunner(settings=self.settings, journal=self.journal, backend=self.backend, job=fresh,
                               stop=self.stop, sleep=self.sleep, clock=self.clock)
            self.current = runner
            outcome = await runner.run()
            self.current = None
            if outcome == "interrupted":
                self.journal.update_job(job.id, state=JobState.QUEUED)
                log.info("job_interrupted")
                return outcome
            with self.journal.transaction() as db:
                if outcome in ("failed", "cancelled"):
                    self.journal.skip_unfinished(job.id, db)
                error = runner.fatal.as_record() if runner.fatal is not None else None
                fields: dict[str, object] = {"state": JobState.FINALIZING, "finished_at": time.time(),
                                             "meta": {**fresh.meta, "final": outcome, "num_ctx": runner.num_ctx}}
                if error:
                    fields["error"] = error
                self.journal.update_job(job.id, db=db, **fields)
            final = self.journal.job(job.id)
            assert final is not None
            counts = self.journal.counts(job.id)
            log.info("job_finished", status=outcome, completed=counts.get("done", 0),
                     failed=counts.get("failed", 0) + counts.get("invalid", 0), skipped=counts.get("skipped", 0))
            self.publish(final)
            return outcome
        finally:
            structlog.contextvars.unbind_contextvars("job_id", "input")

    async def run_once(self) -> int:
        """Drain the inbox and all pending work, then return (``batchd run --once``)."""
        self.startup()
        self.claim_present()
        while not self.stop.is_set() and await self.step():
            pass
        return 0

    async def aclose(self) -> None:
        if self._backend is not None:
            await self._backend.aclose()
        self.journal.close()
