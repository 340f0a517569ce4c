"""Prometheus exposition: ``batchd_*`` metrics on ``/metrics`` and/or a node_exporter textfile.

Nothing here runs on the request path. The runner counts into its
``JobMetrics`` as before (one ``count_outcome`` per finished request); the
exporter takes the difference between a job's counters now and when this
process started running it, adds what earlier jobs left, and serves that as
process-lifetime counters (a restart resets them, which Prometheus' ``rate()``
expects). ``live.py`` calls ``refresh`` about once a second on the event loop;
the HTTP thread only reads the last snapshot. Labels stay low-cardinality:
status, error code, retry cause, trim strategy; never a custom_id or file name.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from batchd import __version__, errors
from batchd.addr import split_host_port
from batchd.config import MetricsSettings
from batchd.errors import ConfigError
from batchd.fsutil import write_atomic
from batchd.journal import FINISHED
from batchd.metrics import LATENCY_BUCKETS, JobMetrics
from batchd.status.promserver import serve


def _known_codes() -> frozenset[str]:
    """Every error code and retry cause the exception tree can produce (label values stay bounded)."""
    seen: set[str] = set()
    todo: list[type[BaseException]] = [errors.BatchdError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        seen.update(v for v in (getattr(cls, "code", None), getattr(cls, "cause", None)) if isinstance(v, str))
    return frozenset(
        seen | {"context_overflow", "invalid_reply", "prompt_truncated", "length_at_window", "invalid_line", "unknown"}
    )


KNOWN = _known_codes()
_JOB_STATUSES = frozenset(s.value for s in FINISHED)


def _label(value: str) -> str:
    return value if value in KNOWN else "other"


#: what a counter reads off ``JobMetrics``: a number, or counts by one label's values
Reading = Callable[[JobMetrics], int | Mapping[str, int]]


@dataclass(frozen=True)
class Count:
    """One counter read from ``JobMetrics``: its family, its help, how to read it and its labels."""

    family: str
    doc: str
    read: Reading
    #: the label the keys of a mapping fill (``cause`` values are bounded: unknown ones read ``other``)
    by: str | None = None
    #: labels every sample of this row carries
    fixed: tuple[tuple[str, str], ...] = ()


_REQUESTS = "Requests finished, by status and cause (error code)."

#: Every counter the exporter reads from ``JobMetrics``, in exposition order: adding one is one line here.
COUNTS: tuple[Count, ...] = (
    Count("batchd_requests", _REQUESTS, lambda m: m.completed, fixed=(("status", "completed"), ("cause", "none"))),
    Count("batchd_requests", _REQUESTS, lambda m: m.failures, by="cause", fixed=(("status", "failed"),)),
    Count("batchd_request_retries", "Request retries, by cause.", lambda m: m.retries, by="cause"),
    Count("batchd_prompt_tokens", "Prompt tokens the backend reported.", lambda m: m.prompt_tokens),
    Count("batchd_completion_tokens", "Completion tokens the backend reported.", lambda m: m.completion_tokens),
    Count(
        "batchd_cached_prompt_tokens",
        "Prompt tokens estimated served from the backend's cache.",
        lambda m: m.cached_prompt_tokens,
    ),
    Count("batchd_context_trims", "Conversation trims, by strategy.", lambda m: m.trims, by="strategy"),
    Count(
        "batchd_context_overflows",
        "Prompts the backend refused or cut for the context window.",
        lambda m: m.retries.get("context_overflow", 0) + m.truncations_detected,
    ),
    Count("batchd_oom_events", "Backend out-of-memory errors.", lambda m: m.oom_events),
    Count("batchd_backend_outages", "Times the backend stopped answering and jobs paused.", lambda m: m.outages),
)


def _read(count: Count, m: JobMetrics) -> int | dict[str, int]:
    value = count.read(m)
    return value if isinstance(value, int) else {k: v for k, v in value.items() if v}


def _combined(a: int | Mapping[str, int], b: int | Mapping[str, int], sign: int) -> int | dict[str, int]:
    if isinstance(a, int) and isinstance(b, int):
        return a + sign * b
    assert not isinstance(a, int) and not isinstance(b, int)
    out = Counter(a)
    for k, v in b.items():
        out[k] += sign * v
    return {k: v for k, v in out.items() if v}


def _zero(count: Count) -> int | dict[str, int]:
    return 0 if count.by is None else {}


@dataclass(frozen=True)
class Tally:
    """Counters of one job (or a sum of runs): what the exporter adds up across jobs.

    ``counts`` lines up with ``COUNTS``; the latency histogram is kept beside them.
    """

    counts: tuple[int | Mapping[str, int], ...] = field(default_factory=lambda: tuple(_zero(c) for c in COUNTS))
    latency_counts: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS) + 1)
    latency_sum: float = 0.0

    @classmethod
    def of(cls, m: JobMetrics) -> Tally:
        return cls(
            counts=tuple(_read(c, m) for c in COUNTS),
            latency_counts=tuple(m.latency_counts),
            latency_sum=m.latency_sum,
        )

    def combine(self, other: Tally, sign: int = 1) -> Tally:
        return Tally(
            counts=tuple(_combined(a, b, sign) for a, b in zip(self.counts, other.counts, strict=True)),
            latency_counts=tuple(a + sign * b for a, b in zip(self.latency_counts, other.latency_counts)),
            latency_sum=self.latency_sum + sign * other.latency_sum,
        )


@dataclass(frozen=True)
class Live:
    """Gauges read from the daemon's memory each tick (``live.py``)."""

    job_running: bool = False
    lanes: int = 0
    lanes_active: int = 0
    lanes_in_use: int = 0
    backend_up: bool | None = None
    vram_used_bytes: int | None = None
    vram_total_bytes: float | None = None
    #: (store, wall-clock since) of each store that refuses writes now (``storage.DiskWatch``)
    storage_blocked: tuple[tuple[str, float], ...] = ()


#: the stores ``batchd_storage_blocked`` has a sample for (``storage.Store``'s values)
STORES = ("journal", "spool", "outbox", "status")


@dataclass(frozen=True)
class Queue:
    """Gauges derived from the journal (``views.status_views``), refreshed off the event loop."""

    jobs: int = 0
    requests: int = 0
    progress: float | None = None
    eta_seconds: float | None = None
    #: jobs waiting to run, by priority (``schedule``)
    by_priority: Mapping[int, int] = field(default_factory=dict)
    #: times a running job yielded to a higher-ranked one (journal lifetime)
    preemptions: int = 0
    #: ``[notify]`` notifications journaled, by state (pending, delivered, done, failed)
    notifications: Mapping[str, int] = field(default_factory=dict)


class Exporter:
    """The registry (not the global one) and its two outputs. See the module docstring."""

    def __init__(self, settings: MetricsSettings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._finished = Tally()  # folded runs, plus invalid/skipped rows counted at publish
        self._invalid: Counter[tuple[str, str]] = Counter()  # (status, cause) counted at publish
        self._jobs: Counter[str] = Counter()
        self._running: tuple[JobMetrics, Tally] | None = None
        self._snapshot: tuple[Tally, dict[tuple[str, str], int], dict[str, int]] = (Tally(), {}, {})
        # replaced whole (never mutated), so the HTTP thread reads them without a lock
        self._live = Live()
        self._queue = Queue()
        self._server: Any = None
        self.registry.register(_Collector(self))

    @property
    def enabled(self) -> bool:
        return bool(self.settings.listen or self.settings.textfile)

    # -- what the daemon tells us ----------------------------------------------------------

    def job_started(self, metrics: JobMetrics) -> None:
        """A run of a job begins; its counters so far (a resumed job's) are not this process's."""
        self._running = (metrics, Tally.of(metrics))

    def job_ended(self) -> None:
        if self._running is not None:
            metrics, base = self._running
            self._finished = self._finished.combine(Tally.of(metrics).combine(base, -1))
            self._running = None
        self.refresh()

    def job_published(self, status: str, counts: Mapping[str, int]) -> None:
        """Rows no run ever finished: invalid input lines, and those skipped by a cancel or failure."""
        if counts.get("invalid"):
            self._invalid[("failed", "invalid_input")] += counts["invalid"]
        if counts.get("skipped"):  # cause: what stopped the job (cancelled, failed)
            self._invalid[("skipped", status if status in _JOB_STATUSES else "other")] += counts["skipped"]
        self._jobs[status if status in _JOB_STATUSES else "other"] += 1
        self.refresh()

    def set_live(self, live: Live) -> None:
        self._live = live

    def set_queue(self, queue: Queue) -> None:
        self._queue = queue

    def refresh(self) -> None:
        """Take a consistent snapshot for the HTTP thread (called on the event loop)."""
        tally = self._finished
        if self._running is not None:
            metrics, base = self._running
            tally = tally.combine(Tally.of(metrics).combine(base, -1))
        with self._lock:
            self._snapshot = (tally, dict(self._invalid), dict(self._jobs))

    def snapshot(self) -> tuple[Tally, Live, Queue, dict[tuple[str, str], int], dict[str, int]]:
        with self._lock:
            tally, extra, jobs = self._snapshot
        return tally, self._live, self._queue, extra, jobs

    # -- outputs -----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on ``metrics.listen``; ConfigError (exit 2) when malformed or the port is taken."""
        if not self.settings.listen:
            return
        host, port = parse_listen(self.settings.listen)
        try:
            self._server = serve(host, port, self.registry)
        except OSError as exc:
            raise ConfigError("metrics.listen", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc

    @property
    def port(self) -> int | None:
        return int(self._server.server_port) if self._server is not None else None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def write_textfile(self) -> None:
        """node_exporter runs as its own user: the file is world-readable (it holds no names)."""
        path = self.settings.textfile
        if path is not None:
            write_atomic(Path(path), self.exposition(), mode=0o644)


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``:port`` or ``port`` (loopback)."""
    host, port = split_host_port(listen, key="metrics.listen")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError("metrics.listen", f"{host!r} is not an IP address") from None
    return host, port


class _Collector(Collector):
    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Metric]:
        tally, live, queue, extra, jobs = self.exporter.snapshot()
        yield from _counters(tally, {"batchd_requests": extra})
        yield _by("batchd_jobs_finished", "Jobs published to the outbox, by status.", "status", jobs)
        hist = HistogramMetricFamily("batchd_request_latency_seconds", "Backend call latency of answered requests.")
        cumulative, buckets = 0, []
        for bound, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], tally.latency_counts):
            cumulative += n
            buckets.append((bound, cumulative))
        hist.add_metric([], buckets, tally.latency_sum)
        yield hist
        yield _gauge("batchd_queue_jobs", "Jobs waiting to run (queued or being read).", queue.jobs)
        yield _gauge("batchd_queue_requests", "Requests not yet finished in running and queued jobs.", queue.requests)
        by_priority = GaugeMetricFamily(
            "batchd_queue_jobs_by_priority", "Jobs waiting, by priority.", labels=["priority"]
        )
        for priority, n in sorted(queue.by_priority.items()):
            by_priority.add_metric([str(priority)], n)
        yield by_priority
        yield CounterMetricFamily(
            "batchd_preemptions", "Times a running job yielded to a higher-ranked one.", value=queue.preemptions
        )
        notes = GaugeMetricFamily("batchd_notifications", "[notify] notifications, by state.", labels=["state"])
        for state in ("pending", "delivered", "done", "failed"):
            notes.add_metric([state], queue.notifications.get(state, 0))
        yield notes
        yield _gauge("batchd_job_running", "1 while a job runs.", int(live.job_running))
        if queue.progress is not None:
            yield _gauge("batchd_job_progress_ratio", "Finished fraction of the running job.", queue.progress)
        if queue.eta_seconds is not None:
            yield _gauge("batchd_job_eta_seconds", "Estimated seconds until the running job ends.", queue.eta_seconds)
        yield _gauge("batchd_lanes", "Lanes configured for the running job.", live.lanes)
        yield _gauge("batchd_lanes_active", "Lanes the VRAM policy lets take requests.", live.lanes_active)
        yield _gauge("batchd_lanes_in_use", "Requests in flight to the backend.", live.lanes_in_use)
        if live.backend_up is not None:
            yield _gauge(
                "batchd_backend_up", "1 when the backend answers, 0 while jobs wait for it.", int(live.backend_up)
            )
        if live.vram_used_bytes is not None:
            yield _gauge("batchd_vram_used_bytes", "GPU memory in use (while a job runs).", live.vram_used_bytes)
        if live.vram_total_bytes is not None:
            yield _gauge("batchd_vram_total_bytes", "GPU memory of the card (while a job runs).", live.vram_total_bytes)
        blocked = dict(live.storage_blocked)
        family = GaugeMetricFamily(
            "batchd_storage_blocked",
            "1 while the store refuses writes (disk full, unwritable): work waits.",
            labels=["store"],
        )
        for store in STORES:
            family.add_metric([store], int(store in blocked))
        yield family
        if blocked:
            since = GaugeMetricFamily(
                "batchd_storage_blocked_since_seconds", "Unix time a store began refusing writes.", labels=["store"]
            )
            for store, at in sorted(blocked.items()):
                since.add_metric([store], at)
            yield since
        info = GaugeMetricFamily("batchd_build_info", "batchd version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def _counters(tally: Tally, extra: Mapping[str, Mapping[tuple[str, str], int]]) -> Iterator[CounterMetricFamily]:
    """One family per name in ``COUNTS`` (in order): plain rows first, then the labelled samples sorted;
    ``extra`` adds samples counted outside ``JobMetrics`` (rows no run finished) to a family."""
    rows: dict[str, list[tuple[Count, int | Mapping[str, int]]]] = {}
    for count, value in zip(COUNTS, tally.counts, strict=True):
        rows.setdefault(count.family, []).append((count, value))
    for name, members in rows.items():
        first = members[0][0]
        labels = [k for k, _ in first.fixed] + ([first.by] if first.by else [])
        family = CounterMetricFamily(name, first.doc, labels=labels)
        labelled: Counter[tuple[str, ...]] = Counter(extra.get(name, {}))
        for count, value in members:
            fixed = [v for _, v in count.fixed]
            if isinstance(value, int):
                family.add_metric(fixed, value)
                continue
            for key, n in value.items():
                labelled[(*fixed, _label(key) if count.by == "cause" else key)] += n
        for values, n in sorted(labelled.items()):
            family.add_metric(list(values), n)
        yield family


def _by(name: str, doc: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([key], n)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)
