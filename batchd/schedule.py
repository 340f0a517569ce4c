"""Who goes first: the queue's run order, the reason each job waits, and when a running job yields.

Pure rules on plain records (the journal reads them, ``queue_entries``; the daemon, the status views and
``batchd status`` ask here), on an injected wall clock. ``fair`` (the default) ranks by:

1. ``priority``, higher first (a job's own, else its pipeline's, else ``[schedule] default_priority``);
2. *aging*: a job that has waited longer than ``max_wait`` goes before every job of its priority that has
   not (the longest-waiting first);
3. smallest remaining work first (requests not yet answered);
4. claim order.

A running job yields, at request boundaries, to the first queued job when that one ranks strictly higher:
a higher priority, or the same priority and (smaller remaining work, or aged) while both use the same
model and ``num_ctx`` (switching would reload the model: only priority is worth that). A job started
because it had aged (*lifted*) yields only to a higher priority, so a big job lifted by aging is not sent
back by the next small one. ``fifo`` keeps claim order and never preempts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Policy(str, Enum):
    FAIR = "fair"
    FIFO = "fifo"


class Why(str, Enum):
    """Why a job waits (``batchd status``, ``!status.json``) or why a running job yielded (``REASON``)."""

    NEXT = "next"
    RUNNING = "running"
    PRIORITY = "priority"  # behind (or preempted by) a higher priority
    AGED = "aged"  # behind (or preempted by) a job that waited longer than max_wait_minutes
    SMALLER = "smaller"  # behind (or preempted by) a job with less work left
    CLAIMED_EARLIER = "claimed_earlier"  # fifo, or everything else equal
    SAME_MODEL = "same_model"  # would go first, but the running job's model/num_ctx differs: no reload
    NEEDS_ATTENTION = "needs_attention"  # paused by fail-fast until retried


@dataclass(frozen=True)
class Entry:
    """One job with work left, as the scheduler sees it."""

    id: str
    seq: int
    priority: int
    #: requests not yet answered (queued or running)
    remaining: int
    #: wall time it last went (back) to the queue
    waiting_since: float
    model: str | None = None
    num_ctx: int | None = None
    running: bool = False
    attention: bool = False
    #: it runs because it had aged: it yields only to a higher priority
    lifted: bool = False


@dataclass(frozen=True)
class Place:
    """A job's place in the run order and why it is there (``ahead``: the job it waits behind)."""

    entry: Entry
    why: Why
    ahead: str | None = None


@dataclass(frozen=True)
class Rules:
    policy: Policy = Policy.FAIR
    #: seconds a queued job may wait before it goes before its priority's smaller jobs
    max_wait: float = 3600.0

    def aged(self, e: Entry, now: float) -> bool:
        return not e.running and now - e.waiting_since > self.max_wait

    def key(self, e: Entry, now: float) -> tuple[float, ...]:
        if self.policy is Policy.FIFO:
            return (e.seq,)
        if self.aged(e, now):
            return (-e.priority, 0, e.waiting_since, e.seq)
        return (-e.priority, 1, e.remaining, e.seq)

    def queue(self, entries: list[Entry], now: float) -> list[Entry]:
        """The queued jobs that may run, best first (a paused job is not among them)."""
        return sorted((e for e in entries if not e.running and not e.attention), key=lambda e: self.key(e, now))

    def next(self, entries: list[Entry], now: float) -> Entry | None:
        ranked = self.queue(entries, now)
        return ranked[0] if ranked else None

    def challenge(self, running: Entry, entries: list[Entry], now: float) -> tuple[Entry, Why] | None:
        """The queued job the running one must yield to now, and why; None: keep running."""
        if self.policy is Policy.FIFO:
            return None
        best = self.next(entries, now)
        if best is None or best.id == running.id:
            return None
        if best.priority > running.priority:
            return best, Why.PRIORITY
        if best.priority < running.priority or running.lifted or not _same_server_side(best, running):
            return None
        if self.aged(best, now):
            return best, Why.AGED
        if best.remaining < running.remaining:
            return best, Why.SMALLER
        return None  # never to an equal rank

    def order(self, entries: list[Entry], now: float) -> list[Place]:
        """Every job with work left in the order it will run, each with why it waits where it does."""
        places: list[Place] = []
        running = next((e for e in entries if e.running), None)
        ahead: Entry | None = None
        if running is not None:
            places.append(Place(running, Why.RUNNING))
            ahead = running
        for e in self.queue(entries, now):
            places.append(Place(e, self._why(e, ahead, running, now), ahead.id if ahead else None))
            ahead = e
        places += [Place(e, Why.NEEDS_ATTENTION) for e in entries if e.attention and not e.running]
        return places

    def _why(self, e: Entry, ahead: Entry | None, running: Entry | None, now: float) -> Why:
        if ahead is None:
            return Why.NEXT
        if self.policy is Policy.FIFO:
            return Why.CLAIMED_EARLIER
        if ahead is running and running is not None:
            if e.priority > running.priority:
                return Why.NEXT  # the running job is yielding to it
            smaller_or_aged = self.aged(e, now) or e.remaining < running.remaining
            if e.priority == running.priority and not running.lifted and smaller_or_aged:
                return Why.NEXT if _same_server_side(e, running) else Why.SAME_MODEL
        if ahead.priority > e.priority:
            return Why.PRIORITY
        if ahead is not running and self.aged(ahead, now) and not self.aged(e, now):
            return Why.AGED
        if ahead is running and running is not None and running.lifted:
            return Why.AGED
        if ahead.remaining < e.remaining:
            return Why.SMALLER
        return Why.CLAIMED_EARLIER


def _same_server_side(a: Entry, b: Entry) -> bool:
    """Same model and (when both are known) the same ``num_ctx``: switching costs no reload."""
    if (a.model or "") != (b.model or ""):
        return False
    return a.num_ctx is None or b.num_ctx is None or a.num_ctx == b.num_ctx
