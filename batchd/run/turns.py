"""Whose turn it is: the next job to run and, while one runs, whether it must yield (``schedule``'s rules
over the journal's queue); ``job_preempted`` (BY, REASON) is logged here, at the switch."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from batchd.config import Settings
from batchd.journal import Job, JobState, Journal
from batchd.metrics import JobMetrics
from batchd.run.failfast import Window
from batchd.schedule import Entry, Policy, Rules

log = structlog.get_logger("batchd.schedule")

#: how often the running job's rivals are read from the journal (the fail-fast check is in memory)
RIVALS_SECONDS = 1.0


class Turns:
    """The daemon's scheduler: ``next_job()`` picks, ``yield_check(job)`` is the runner's question."""

    def __init__(
        self,
        journal: Journal,
        settings: Callable[[], Settings],
        wall: Callable[[], float] = time.time,
        on_pause: Callable[[], None] | None = None,
    ):
        self.journal = journal
        self.settings = settings
        self.wall = wall
        #: told when fail-fast paused a job (the daemon's notifier owes a word about it)
        self.on_pause = on_pause

    def rules(self) -> Rules:
        schedule = self.settings().schedule
        return Rules(policy=Policy(schedule.policy), max_wait=schedule.max_wait_minutes * 60)

    def entries(self, at_least: int = 1) -> list[Entry]:
        return self.journal.queue_entries(self.settings().schedule.default_priority, at_least=at_least)

    def next_job(self, *, ingest_first: bool) -> Job | None:
        """The job to run (or, when ``ingest_first``, to ingest) now; None: nothing runnable."""
        rules = self.rules()
        if rules.policy is Policy.FIFO:
            job = self.journal.next_job()  # claim order, as before there was a choice
            if job is None or job.attention is None:
                return job
        elif ingest_first and (ingesting := self.journal.jobs([JobState.INGESTING])):
            return ingesting[-1]  # oldest first (jobs() lists newest first)
        now = self.wall()
        entries = self.entries()
        # A job still ``running`` in the journal is a run that did not end (its ``end_run`` refused by a full
        # disk): it goes on first, or it would stay running for ever (the ranking only orders queued jobs).
        unfinished = next((e for e in entries if e.running and not e.attention), None)
        if unfinished is not None:
            return self.journal.job(unfinished.id)
        best = rules.next(entries, now)
        if best is None:
            return None
        if rules.aged(best, now) != best.lifted:
            self.journal.set_lifted(best.id, rules.aged(best, now))
        return self.journal.job(best.id)

    def yield_check(self, job: Job, metrics: JobMetrics) -> Callable[[], str | None]:
        """For the runner: asked every few seconds; a reason when ``job`` must yield now (logged once):
        its answers keep failing (``failfast``: ``needs_attention``), or a higher-ranked job waits."""
        window = Window(journal=self.journal, job=job, metrics=metrics, settings=self.settings)
        asked = [float("-inf")]

        def ask() -> str | None:
            if window.check() is not None:  # in memory: every time
                self.yielded(job.id)
                if self.on_pause is not None:
                    self.on_pause()
                return "needs_attention"
            if self.wall() - asked[0] < RIVALS_SECONDS:  # a journal read: at most this often
                return None
            asked[0] = self.wall()
            rules = self.rules()
            if rules.policy is Policy.FIFO:
                return None
            entries = self.entries(at_least=2)
            running = next((e for e in entries if e.id == job.id), None)
            if running is None:
                return None
            found = rules.challenge(running, entries, self.wall())
            if found is None:
                return None
            by, why = found
            log.info(
                "job_preempted",
                job_id=job.id,
                input=job.input_name,
                by=by.id,
                reason=why.value,
                priority=running.priority,
                by_priority=by.priority,
                remaining=running.remaining,
                by_remaining=by.remaining,
            )
            self.yielded(job.id, preempted=True)
            return why.value

        return ask

    def yielded(self, job_id: str, *, preempted: bool = False) -> None:
        """The job yields (it goes back to the queue once its requests in flight are recorded): its wait
        (aging) counts from now, and it is no longer lifted."""
        self.journal.back_in_queue(job_id, self.wall(), preempted=preempted)
