"""Fail fast: a job whose answers keep failing the same way pauses itself as ``needs_attention``.

Each window of ``[preview] rows`` answers (the first ones of a run, then the next ones: tumbling windows,
counted from the runner's in-memory ``JobMetrics``, no journal scan) is looked at once: when more than
``[preview] fail_fast_ratio`` of it failed with one error code, the job is paused (``Journal.
pause_for_attention``: why, with three sample errors; nothing is discarded, it stays queued and the
scheduler skips it) and the runner yields like it does to another job. ``batchd resume`` / ``retry``
clears it and the job runs on where it stopped; a cancel ends it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog

from batchd.config import Settings
from batchd.journal import Job, Journal
from batchd.metrics import JobMetrics

log = structlog.get_logger("batchd.runner")

SAMPLES = 3


class Window:
    """One running job's fail-fast watch: ``check()`` says why it must pause, or None."""

    def __init__(self, *, journal: Journal, job: Job, metrics: JobMetrics, settings: Callable[[], Settings]):
        self.journal = journal
        self.job = job
        self.metrics = metrics
        self.settings = settings
        self._start = self._counts()

    def _counts(self) -> tuple[int, Counter[str]]:
        failures = Counter(self.metrics.failures)
        return self.metrics.completed + sum(failures.values()), failures

    def check(self) -> dict[str, Any] | None:
        preview = self.settings().preview
        answered, failures = self._counts()
        start_answered, start_failures = self._start
        if preview.rows <= 0 or answered - start_answered < preview.rows:
            return None
        window = answered - start_answered
        self._start = (answered, failures)  # the next window starts here
        code, n = max(((c, failures[c] - start_failures[c]) for c in failures), key=lambda t: t[1], default=("", 0))
        if not n or n / window <= preview.fail_fast_ratio:
            return None
        why: dict[str, Any] = {
            "code": code,
            "message": f"{n} of the last {window} answers failed with {code}; paused so nothing more is spent "
            "on it: fix the pipeline or the model, then `batchd resume JOB` (or cancel it)",
            "failed": n,
            "window": window,
            "samples": self.journal.failed_samples(self.job.id, code, SAMPLES),
            "at": time.time(),
        }
        self.journal.pause_for_attention(self.job.id, why)
        log.warning(
            "job_needs_attention",
            job_id=self.job.id,
            input=self.job.input_name,
            code=code,
            failed=n,
            window=window,
            samples=why["samples"],
        )
        return why
