"""The job views: one job as people and scripts see it, typed, read from the journal.

``batchd status`` (table and ``--json``), ``!status.json`` / ``!status.html``, the queue
gauges of Prometheus and the API's batch status all start here: ``ViewState.of`` says what
state a job shows (``cancelling`` is a running job asked to stop, not a journal state), and
``ViewState.running`` is the one "running or cancelling" filter. ``JobView.as_dict`` is the
documented ``batchd status --json`` shape (keys and order); do not change it lightly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from batchd import pace
from batchd.config import ScheduleSettings
from batchd.journal import ACTIVE, FINISHED, Job, JobState, Journal
from batchd.redact import escape_controls
from batchd.schedule import Place, Policy, Rules

#: the rate is measured over the progress samples of this last stretch (a resumed job's
#: downtime, or a slow first minute, does not drag it down)
RATE_WINDOW_SECONDS = 120.0


class ViewState(str, Enum):
    """A job's state as shown: the journal's states plus ``cancelling`` (running, asked to stop)."""

    INGESTING = "ingesting"
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DUPLICATE = "duplicate"

    @classmethod
    def of(cls, job: Job) -> ViewState:
        if job.cancel_requested and job.state is JobState.RUNNING:
            return cls.CANCELLING
        return cls(job.state.value)

    @property
    def running(self) -> bool:
        """The job holds the backend: running, or running while it cancels."""
        return self in (ViewState.RUNNING, ViewState.CANCELLING)


@dataclass(frozen=True)
class JobView:
    """One job as ``batchd status --json`` shows it. Names and error are shown escaped: a dropped
    file's name is anyone's text, control characters (terminal escapes) must not reach a terminal."""

    job_id: str
    input: str
    state: ViewState
    source: str
    total: int
    done: int
    failed: int
    skipped: int
    finished: int
    progress: float
    req_per_s: float | None
    eta_seconds: int | None
    lanes: int | None
    lanes_mode: str | None
    retry_of: str | None
    outbox: str | None
    error: Any
    created_at: float | None
    started_at: float | None
    finished_at: float | None
    #: who goes first (``schedule``): the job's rank, why it waits (a ``schedule.Why``) and behind whom
    priority: int | None = None
    waits: str | None = None
    behind: str | None = None
    #: paused by fail-fast (``needs_attention``): why, with sample errors
    attention: Any = None
    #: the running job's first look, ``NAME.preview`` in the outbox (``publish.preview``)
    preview: str | None = None
    #: which model answers (``run.fingerprints``), and how often it changed under the job (``model_changed``)
    fingerprint: str | None = None
    model_changes: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape (a stable, documented one): the fields in order, the state as its string."""
        return {
            "job_id": self.job_id,
            "input": self.input,
            "state": self.state.value,
            "source": self.source,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "finished": self.finished,
            "progress": self.progress,
            "req_per_s": self.req_per_s,
            "eta_seconds": self.eta_seconds,
            "lanes": self.lanes,
            "lanes_mode": self.lanes_mode,
            "retry_of": self.retry_of,
            "outbox": self.outbox,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "priority": self.priority,
            "waits": self.waits,
            "behind": self.behind,
            "attention": self.attention,
            "preview": self.preview,
            "fingerprint": self.fingerprint,
            "model_changes": self.model_changes,
        }


@dataclass(frozen=True)
class StatusViews:
    """Running and queued jobs in the order they run (``active``), then recently finished ones."""

    active: tuple[JobView, ...] = ()
    recent: tuple[JobView, ...] = ()
    #: the newest ``.cancel`` files refused (``intake.cancels``): who dropped which, and why
    refused: tuple[dict[str, Any], ...] = ()

    @property
    def running(self) -> tuple[JobView, ...]:
        return tuple(v for v in self.active if v.state.running)

    @property
    def waiting(self) -> int:
        """Active jobs that do not hold the backend (queued, being read, being written out)."""
        return len(self.active) - len(self.running)

    def as_dict(self) -> dict[str, list[dict[str, Any]]]:
        """``batchd status --json``; ``!status.json`` holds the same two lists."""
        return {"active": [v.as_dict() for v in self.active], "recent": [v.as_dict() for v in self.recent]}


def _rate(journal: Journal, job: Job, done_failed: int, now: float) -> float | None:
    points = [(s.t, s.done + s.failed) for s in journal.samples(job.id, since=now - RATE_WINDOW_SECONDS)]
    measured = pace.window_rate(points)
    if measured is not None:
        return measured
    # No samples yet (the runner writes one every few seconds): the job's busy time, else wall time.
    state = job.metrics.get("state", {}) if job.metrics else {}
    elapsed = state.get("busy_seconds") or (now - job.started_at if job.started_at else 0)
    return pace.rate(done_failed, elapsed)


def job_view(journal: Journal, job: Job, now: float | None = None, place: Place | None = None) -> JobView:
    """One job with its counts, rate, ETA and lanes, as of ``now``."""
    counts = journal.counts(job.id)
    done = counts.get("done", 0)
    failed = counts.get("failed", 0) + counts.get("invalid", 0)
    skipped = counts.get("skipped", 0)
    finished = done + failed + skipped
    now = now or time.time()
    rate = eta = None
    state_metrics = job.metrics.get("state", {}) if job.metrics else {}
    lanes = state_metrics.get("lanes")
    if job.state is JobState.RUNNING:
        rate = _rate(journal, job, done + counts.get("failed", 0), now)
        recent = journal.samples(job.id, since=now - RATE_WINDOW_SECONDS)
        lanes = recent[-1].lanes if recent and recent[-1].lanes is not None else lanes
        left = counts.get("queued", 0) + counts.get("running", 0)
        eta = pace.eta(left, rate)
    return JobView(
        job_id=job.id,
        input=escape_controls(job.input_name),
        state=ViewState.of(job),
        source=job.source,
        total=job.total,
        done=done,
        failed=failed,
        skipped=skipped,
        finished=finished,
        progress=round(finished / job.total, 4) if job.total else (1.0 if job.state in FINISHED else 0.0),
        req_per_s=round(rate, 3) if rate else None,
        eta_seconds=round(eta) if eta else None,
        lanes=lanes,
        lanes_mode=state_metrics.get("lanes_mode"),
        retry_of=job.retry_of,
        # reserved at claim, shown once the job publishes (or has published)
        outbox=job.outbox_name if job.state in (*FINISHED, JobState.FINALIZING) else None,
        error=_escaped(job.error),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        priority=place.entry.priority if place is not None else job.priority,
        waits=place.why.value if place is not None and not place.entry.running else None,
        behind=place.ahead if place is not None else None,
        attention=_escaped(job.attention),
        fingerprint=(state_metrics.get("fingerprint") or {}).get("id"),
        model_changes=len(state_metrics.get("model_changes") or ()),
    )


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    return value


def status_views(
    journal: Journal, *, limit: int, now: float | None = None, schedule: ScheduleSettings | None = None
) -> StatusViews:
    """Running and queued jobs in the order they run (``schedule``'s, with why each waits; claim order
    without it), then jobs being read or written out, then the ``limit`` most recent finished ones."""
    # Every running and queued job, however many: the cap is for the finished ones only.
    active = sorted(journal.jobs([*ACTIVE, JobState.INGESTING], limit=None), key=lambda j: j.seq)
    places: dict[str, Place] = {}
    if schedule is not None:
        rules = Rules(policy=Policy(schedule.policy), max_wait=schedule.max_wait_minutes * 60)
        order = rules.order(journal.queue_entries(schedule.default_priority), now or time.time())
        places = {p.entry.id: p for p in order}
        rank = {job_id: i for i, job_id in enumerate(places)}
        active.sort(key=lambda j: (j.id not in rank, rank.get(j.id, 0), j.seq))
    # an API batch whose outputs expired is gone for its client: not listed either
    recent = [j for j in journal.jobs(list(FINISHED), limit=limit) if not j.meta.get("expired_at")]
    return StatusViews(
        active=tuple(job_view(journal, j, now, places.get(j.id)) for j in active),
        recent=tuple(job_view(journal, j, now) for j in recent),
        refused=tuple(_escaped(r) for r in journal.refusals(10)) if schedule is not None else (),
    )
