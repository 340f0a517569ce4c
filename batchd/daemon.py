"""The daemon: claim what is in the inbox, run jobs one at a time, publish outboxes.

``step()`` does one unit of work (publish one finished job, or run the next
queued one) so tests can drive it; ``run_once()`` drains and returns (``batchd
run --once``); ``run()`` is the long-running service loop.

In ``run()`` three tasks share the event loop with the job loop: intake's
*watch* and *claims* (see ``intake.py``: new drops are claimed and queued
while a long job runs) and *heartbeat* (watchdog pings, status line, config
reloads), plus *notify* (``publish.notify``). Jobs run one at a time, in the order ``run.turns`` picks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from batchd.aio import wait_first
from batchd.backends.base import Backend, answering_model
from batchd.config import Settings
from batchd.errors import BatchdError, ConfigError, StorageError
from batchd.intake.claim import Claimer
from batchd.intake.inbox import scan
from batchd.intake.watch import choose_mode
from batchd.intake.worker import Intake
from batchd.journal import FinalStatus, Job, JobState, Journal, RunOutcome
from batchd.pace import duration, eta, rate
from batchd.publish.notify import Notifier
from batchd.publish.outbox import Outbox
from batchd.redact import host_of
from batchd.run.connect import make_backend
from batchd.run.runner import JobRunner
from batchd.run.turns import Turns
from batchd.status.live import LiveViews
from batchd.storage import DiskWatch, Store
from batchd.window import StatusWindow

log = structlog.get_logger("batchd.daemon")

#: the job loop looks at the journal this often when idle (``batchd retry``/``cancel`` write there)
IDLE_SECONDS = 1.0
#: watchdog hook, status line, progress log and reloads run this often
HEARTBEAT_SECONDS = 1.0
#: an idle job loop that has not come round for this long stops the WATCHDOG=1 pings (a publish is long)
LOOP_STALL_SECONDS = 600.0


class Daemon:
    def __init__(
        self,
        *,
        settings: Settings,
        journal: Journal | None = None,
        backend: Backend | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        reload_settings: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal or Journal(settings.journal_path)
        self._backend = backend
        self._backend_stale = False
        self.sleep = sleep
        self.clock = clock
        self.reload_settings = reload_settings
        self.claimer = Claimer(settings=settings, journal=self.journal)
        self.outbox = Outbox(settings=settings, journal=self.journal)
        self.notices = Notifier(journal=self.journal, settings=lambda: self.settings)  # [notify], not sd_notify
        self.turns = Turns(self.journal, lambda: self.settings, on_pause=self.notices.jobs_paused)  # who goes first
        self.stop = asyncio.Event()
        self.current: JobRunner | None = None
        self.jobs_done = 0
        #: the stores that refuse writes now (journal, spool, outbox, status files): status and pauses
        self.disk = DiskWatch(clock=clock)
        self._once = False  # run --once: a refusing journal ends the run (exit 1) instead of a wait
        #: jobs whose job_finished is logged (a publish retried after a full disk does not repeat it)
        self._announced: set[str] = set()
        # run() state
        self._threaded_claims = False
        self._wake = asyncio.Event()
        self._reload_asked = False
        self.intake: Intake | None = None
        self._job_started = 0.0
        self._loop_beat = clock()  # the job loop came round (``making_progress``)
        self._job_base = 0
        self._progress_mark: tuple[str, int] | None = None  # (job id, last logged progress step)
        self.heartbeat_seconds = HEARTBEAT_SECONDS
        #: the outbox status page and the Prometheus metrics, kept current off the request path
        self.live = LiveViews(
            state=StatusWindow(
                settings=lambda: self.settings,
                jobs_done=lambda: self.jobs_done,
                clock=lambda: self.clock(),
                current=lambda: self.current,
                disk=self.disk,
                backend=lambda: self.backend,
            )
        )

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = make_backend(self.settings)
        return self._backend

    # -- hooks (systemd notification lives elsewhere) -------------------------------

    def on_ready(self) -> None:
        """Called once the daemon watches the inbox (READY=1)."""

    def on_status(self, text: str) -> None:
        """The one-line status, offered every heartbeat; the receiver paces it (``service.Notifier``)."""

    def on_watchdog(self) -> None:
        """Called from the event loop every ``heartbeat_seconds`` while it is responsive (WATCHDOG=1)."""

    def on_stopping(self) -> None:
        """Called when a stop was asked, before winding down (STOPPING=1)."""

    def on_reloading(self) -> None:
        """Called before a SIGHUP reload is applied (RELOADING=1)."""

    def on_reloaded(self) -> None:
        """Called after a reload, applied or refused (READY=1 again)."""

    def on_settings(self) -> None:
        """Called when the service loop starts with ``self.settings``, and after each applied reload."""

    # -- start-up -------------------------------------------------------------------

    def startup(self) -> None:
        """Bring the journal back to a consistent state after whatever stopped us."""
        recovered = self.journal.recover()
        if any(recovered.values()):
            log.info("journal_recovered", **recovered)
        self.claimer.finish_claims()
        for job in self.journal.jobs([JobState.INGESTING], limit=None):
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
        for finished in self.journal.jobs([JobState.FINALIZING]):
            self.publish(finished)
            return True
        job = self.turns.next_job(ingest_first=not self._threaded_claims)
        if job is None or self.stop.is_set():
            return False
        if job.state is JobState.INGESTING:
            if self._threaded_claims:
                return False  # the claim thread is ingesting it; it wakes us when queued
            self.claimer.ingest(job.id)
            return True
        await self.run_job(job)
        return True

    def publish(self, job: Job) -> None:
        if job.id not in self._announced:
            # Here and not in run_job: duplicates, rejected files and jobs cancelled while queued
            # never run, and EVENT=job_finished must count every finished job once.
            counts = self.journal.counts(job.id)
            log.info(
                "job_finished",
                job_id=job.id,
                input=job.input_name,
                status=(job.final or FinalStatus.COMPLETED).value,
                completed=counts.get("done", 0),
                failed=counts.get("failed", 0) + counts.get("invalid", 0),
                skipped=counts.get("skipped", 0),
            )
            self._announced.add(job.id)
        try:
            self.outbox.publish(job)
            self.disk.recovered(Store.OUTBOX)
            self.disk.recovered(Store.JOURNAL)
            self.notices.job_final(job.id)  # journaled here, delivered by the notify task
            self.jobs_done += 1
            published = self.journal.job(job.id)
            if published is not None:
                self.live.job_published(published, self.journal.counts(job.id))
        except StorageError as exc:
            # Disk full or outbox unwritable: keep the job finalizing and try again later.
            log.error("publish_failed", job_id=job.id, input=job.input_name, error=exc.message)
            raise

    async def run_job(self, job: Job) -> RunOutcome | None:
        """Run one job until it is done, fails, is cancelled or the daemon stops; publish it when final."""
        if self._backend_stale and self._backend is not None:
            await self._backend.aclose()  # the config changed the backend: the next job gets a new one
            self._backend = None
        self._backend_stale = False
        structlog.contextvars.bind_contextvars(job_id=job.id, input=job.input_name)
        try:
            if not self.journal.start_run(job.id, time.time()):
                return None  # cancelled (or finished) between the lookup and now
            self.disk.recovered(Store.JOURNAL)  # it took the write (after a refusal, the episode ends)
            fresh = self.journal.job(job.id)
            assert fresh is not None
            counts = self.journal.counts(job.id)
            log.info(
                "job_started",
                requests=fresh.total,
                pending=counts.get("queued", 0),
                **answering_model(self.backend, fresh.model or self.settings.backend.model),
                mode=fresh.mode,
                lanes=self.settings.backend.lanes,
            )
            runner = JobRunner(
                settings=self.settings,
                journal=self.journal,
                backend=self.backend,
                job=fresh,
                stop=self.stop,
                sleep=self.sleep,
                clock=self.clock,
                disk=self.disk,
                wait_for_disk=not self._once,
            )
            runner.yield_to = self.turns.yield_check(fresh, runner.metrics)
            self._job_started, self._job_base = self.clock(), fresh.total - counts.get("queued", 0)
            self.current = runner
            self.live.job_started(runner.metrics)
            try:
                outcome = await runner.run()
            finally:
                self.current = None
                self.live.job_ended()
            error = runner.fatal.as_record() if runner.fatal is not None else None
            final = self.journal.end_run(job.id, outcome, error=error)
            if final is None:  # a stall ends the run too: the next step runs it again from the journal
                log.info("job_interrupted", outcome=outcome.value, restart=runner.restarting)
                return outcome
            finished = self.journal.job(job.id)
            assert finished is not None
            self.publish(finished)  # logs job_finished
            return outcome
        finally:
            structlog.contextvars.unbind_contextvars("job_id", "input")

    def publish_ready(self) -> int:
        """Publish every finalizing job but the running one's (a job cancelled while queued
        is published at once, not after the job in front of it)."""
        running = self.current.job.id if self.current is not None else None
        n = 0
        for job in self.journal.jobs([JobState.FINALIZING]):
            if job.id != running:
                self.publish(job)
                n += 1
        return n

    async def run_once(self) -> int:
        """Drain the inbox and all pending work, then return (``batchd run --once``)."""
        self._once = True
        self.live.start()
        self.startup()
        self.claim_present()
        progress = asyncio.create_task(self._progress_ticker(), name="progress")
        live = asyncio.create_task(self.live.run(self.stop), name="live")
        try:
            while not self.stop.is_set() and await self.step():
                pass
            await self.notices.deliver_due()  # one try each; what is not delivered waits for the service
        finally:
            progress.cancel()
            live.cancel()
            await asyncio.gather(progress, live, return_exceptions=True)
            await self.live.close()  # the final page: what ran, and that batchd is no longer running
        return 0

    async def _progress_ticker(self) -> None:
        """``job_progress`` lines for ``--once`` too (the service loop's heartbeat does it there)."""
        while True:
            await self.sleep(1.0)
            self._log_progress()

    # -- the service loop -------------------------------------------------------------

    async def run(self) -> int:
        """Watch, claim and run until ``stop`` is set; returns the exit status (0)."""
        self.live.start()
        while not self.stop.is_set():  # a journal that refuses writes at start: wait, as in the loop below
            try:
                self.startup()
                break
            except StorageError as exc:
                self.disk.blocked(Store.JOURNAL, exc)
                await wait_first(self.stop.wait(), timeout=self.disk.next_delay(Store.JOURNAL))
        self._threaded_claims = True
        api = None
        if self.settings.api.listen:
            from batchd.api.server import start_api  # the api extra is optional: import only when asked

            # Raises ConfigError (exit 2) before serving: non-loopback without a token, port taken.
            api = start_api(self.settings, self.stop, on_queued=self.wake)
        self.intake = intake = Intake(
            settings=lambda: self.settings, stop=self.stop, on_claimed=self.wake, clock=self.clock, disk=self.disk
        )
        watch = asyncio.create_task(intake.watch(), name="watch")
        claims = asyncio.create_task(intake.claims(), name="claims")
        heartbeat = asyncio.create_task(self._heartbeat(), name="heartbeat")
        live = asyncio.create_task(self.live.run(self.stop), name="live")
        notify = asyncio.create_task(self.notices.run(self.stop), name="notify")
        await wait_first(intake.ready.wait(), self.stop.wait())
        if not self.stop.is_set():
            self.on_settings()
            self.on_ready()
            log.info(
                "daemon_ready",
                inbox=str(self.settings.inbox),
                watch=choose_mode(self.settings.watch.mode, self.settings.inbox),
            )
        try:
            while not self.stop.is_set():
                self._loop_beat, pause = self.clock(), IDLE_SECONDS
                try:
                    worked = await self.step()
                except StorageError as exc:  # a disk that refuses: wait and try again, with a bounded backoff
                    worked, store = False, Store.JOURNAL if exc.path == str(self.journal.path) else Store.OUTBOX
                    self.disk.blocked(store, exc)  # its end: the write that goes in (run_job, publish)
                    pause = self.disk.next_delay(store)
                if not worked:
                    self._wake.clear()
                    await wait_first(self._wake.wait(), self.stop.wait(), timeout=pause)
        finally:
            self.on_stopping()
            log.info("daemon_stopping", jobs_done=self.jobs_done)
            self.stop.set()
            for task in (watch, heartbeat, live, notify):
                task.cancel()
            # The claim thread finishes the file in hand: a claim is atomic, so waiting is short and safe.
            tasks = (watch, heartbeat, claims, live, notify, *([api] if api else []))
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.live.close()
            log.info("daemon_stopped")
        return 0

    def wake(self) -> None:
        """New work was queued (a claim, an API upload): look for it now, not after the idle wait."""
        self._wake.set()
        self.live.poke()

    def reload(self) -> None:
        """SIGHUP: only a flag; the heartbeat task applies it (between awaits, work in flight is kept)."""
        self._reload_asked = True

    # -- heartbeat: watchdog, status line, reloads -------------------------------------------

    def making_progress(self) -> bool:
        """What the WATCHDOG=1 ping proves: the running job is not stalled past its own restart
        (``run/stall.py``), or the job loop came round within ``LOOP_STALL_SECONDS`` when idle."""
        runner = self.current
        return runner.stall.healthy() if runner is not None else self.clock() - self._loop_beat < LOOP_STALL_SECONDS

    async def _heartbeat(self) -> None:
        while not self.stop.is_set():
            if self.making_progress():
                self.on_watchdog()
            try:
                if self._reload_asked:
                    self._reload_asked = False
                    self.on_reloading()
                    try:
                        self._apply_reload()
                    finally:
                        self.on_reloaded()  # systemd waits for READY=1 after RELOADING=1, even on failure
                if self.current is not None:
                    self.publish_ready()  # the job loop is busy with the running job
                self._log_progress()
                self.on_status(self.status_line())
            except StorageError as exc:  # a publish beside the running job: the disk episode says it, once
                self.disk.blocked(Store.JOURNAL if exc.path == str(self.journal.path) else Store.OUTBOX, exc)
            except Exception:  # noqa: BLE001 - a status hiccup must not end the watchdog pings
                log.exception("heartbeat_failed")
            await wait_first(self.stop.wait(), timeout=self.heartbeat_seconds)

    def status_line(self) -> str:
        """One line for ``systemctl status``: job progress, rate, ETA and queue, or idle."""
        queued = self.journal.jobs([JobState.QUEUED, JobState.INGESTING], limit=None)
        runner = self.current
        if (blocked := self.disk.waiting()) is not None:
            return blocked.text()
        if runner is not None and (stall := runner.stall.stall) is not None:
            return f"{runner.job.input_name}: stalled (no request finished for {duration(stall.seconds)}), restarting"
        if runner is None:
            text = f"idle, {self.jobs_done} jobs done"
            return f"{text}, queue {len(queued)}" if queued else text
        gate = runner.gate
        if gate.down_since is not None:
            host = host_of(runner.backend.host)
            since = time.strftime("%H:%M:%S", time.localtime(gate.down_since_wall or time.time()))
            return (
                f"waiting for backend at {host} since {since} (down {duration(self.clock() - gate.down_since)}, "
                f"{gate.probes} probes; {gate.reason[:80]})"
            )
        job = runner.job
        finished, per_s = self._progress(runner)
        parts = [f"{job.input_name}: {finished:,}/{job.total:,} ({100 * finished / max(1, job.total):.1f}%)"]
        if per_s:
            parts += [f"{per_s:.1f} req/s", f"ETA {duration(eta(job.total - finished, per_s) or 0)}"]
        if runner.metrics.reloads:
            parts.append(f"model reloaded {runner.metrics.reloads}x (another client?)")
        parts.append(f"queue {len(queued)}")
        return ", ".join(parts)

    def _progress(self, runner: JobRunner) -> tuple[int, float | None]:
        """(requests finished, req/s since this run of the job started) of the running job."""
        fresh = runner.done + runner.failed
        return self._job_base + fresh, rate(fresh, self.clock() - self._job_started)

    def _log_progress(self) -> None:
        """``job_progress`` each time the running job crosses another ``log.progress_every_percent``."""
        runner = self.current
        if runner is None:
            return
        job = runner.job
        finished, per_s = self._progress(runner)
        left = eta(job.total - finished, per_s)
        step = runner.settings.log.progress_every_percent
        mark = int(100 * finished / max(1, job.total) // step)
        if self._progress_mark is None or self._progress_mark[0] != job.id:
            # A resumed job counts from where this run of it started.
            self._progress_mark = (job.id, int(100 * self._job_base / max(1, job.total) // step))
        if mark <= self._progress_mark[1]:
            return
        self._progress_mark = (job.id, mark)
        counts = self.journal.counts(job.id)  # lags the runner by one flush (0.25 s): fine for a log line
        # The heartbeat task does not share run_job()'s bound context: name the job here.
        log.info(
            "job_progress",
            job_id=job.id,
            input=job.input_name,
            finished=finished,
            total=job.total,
            failed=counts.get("failed", 0) + counts.get("invalid", 0),
            percent=round(100 * finished / max(1, job.total), 1),
            req_per_s=round(per_s, 2) if per_s else None,
            eta_seconds=round(left) if left is not None else None,
        )

    def _apply_reload(self) -> None:
        if self.reload_settings is None:
            log.warning("config_reload_unsupported")
            return
        try:
            new = self.reload_settings()
        except ConfigError as exc:
            log.error("config_reload_failed", key=exc.key, error=exc.problem)
            return
        except BatchdError as exc:
            log.error("config_reload_failed", error=exc.message)
            return
        old = self.settings
        if new.state_dir != old.state_dir:
            log.warning("config_reload_partial", key="state_dir", reason="a new state_dir needs a restart")
            new = new.model_copy(update={"state_dir": old.state_dir})
        changed = [k for k in type(new).model_fields if getattr(new, k) != getattr(old, k)]
        # Work in flight keeps its settings: the running job its runner, the claim in hand its
        # claimer. The next claim, the next job and the (restarted) watcher see the new ones.
        self.settings = new
        self.claimer = Claimer(settings=new, journal=self.journal)
        self.outbox = Outbox(settings=new, journal=self.journal)
        if new.backend != old.backend:
            self._backend_stale = True
        if self.intake is not None:
            self.intake.nudge()
        self.on_settings()
        log.info("config_reloaded", changed=changed)

    async def aclose(self) -> None:
        if self._backend is not None:
            await self._backend.aclose()
        self.journal.close()
