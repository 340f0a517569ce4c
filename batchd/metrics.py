"""Per-job counters: tokens, context, VRAM, latency and retries by cause.

Kept in memory while a job runs, saved into the journal with every flush (so
a restart continues counting) and written to ``metrics.json`` at the end.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from batchd.metricsfile import Context, Lanes, Outages, Performance, Retries, Server, Summary, Tokens, Vram

#: latency samples kept for percentiles (a ring, so memory stays flat on 170,000 rows)
_LATENCY_RING = 4096
#: upper bounds (seconds) of the latency histogram the Prometheus exposition serves (``prom.py``)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


_COUNTERS = ("retries", "trims", "failures")
#: lanes changes kept for metrics.json and the report (the oldest half is thinned beyond this)
_LANES_SERIES_MAX = 2000


@dataclass
class JobMetrics:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    #: replies whose server said it reused nothing from its prefix cache (``cached_tokens`` 0)
    prompt_cache_misses: int = 0
    #: prompt tokens the job would have sent had every request gone alone with its whole prefix
    isolated_prompt_tokens: int = 0
    requests_sent: int = 0
    #: requests finished by this job's runs, and the failed ones by error code (``count_outcome``)
    completed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    trims: Counter[str] = field(default_factory=Counter)
    truncations_detected: int = 0
    oom_events: int = 0
    outage_seconds: float = 0.0
    outages: int = 0
    ctx_current: int = 0
    ctx_peak: int = 0
    num_ctx: int | None = None
    vram_source: str | None = None
    vram_used: float | None = None
    vram_peak: float | None = None
    vram_total: float | None = None
    vram_used_bytes: int | None = None
    vram_peak_bytes: int | None = None
    #: ``[[pid, bytes], ...]`` of the GPU's compute processes at the last reading (NVML only)
    vram_processes: list[list[int]] | None = None
    vram_pressure_events: int = 0
    offload: dict[str, Any] | None = None
    lanes: int = 1
    lanes_min: int = 1
    lanes_max: int = 1
    #: "fixed" (``backend.lanes = N``) or "auto" (the adaptive controller)
    lanes_mode: str = "fixed"
    #: ``[[unix time, lanes, reason], ...]``: the start and every change of the limit
    lanes_series: list[list[Any]] = field(default_factory=list)
    #: the model the server says answered (the embedded backend serves its GGUF whatever a request names)
    served_model: str | None = None
    trim_at: float | None = None
    #: the server's version (Ollama ``/api/version``), model reloads seen under the job, runner
    #: options removed from request lines (see ``reloads`` and ``backends.ollama_facts``)
    server_version: str | None = None
    reloads: int = 0
    #: which model answers (``run.fingerprints``): the last fingerprint, and each change under the job
    fingerprint: dict[str, Any] | None = None
    model_changes: list[dict[str, Any]] = field(default_factory=list)
    runner_options_stripped: list[str] = field(default_factory=list)
    #: set once when conversation mode evaluated more prompt tokens than isolated requests would
    conversation_not_paying: dict[str, Any] | None = None
    chars_per_token: float | None = None
    busy_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    #: per-bucket (not cumulative) counts over LATENCY_BUCKETS plus +Inf, and their sum
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    _ring_pos: int = 0
    _run_started: float = field(default_factory=time.monotonic)

    def add_latency(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        if len(self.latencies) < _LATENCY_RING:
            self.latencies.append(seconds)
        else:
            self.latencies[self._ring_pos] = seconds
            self._ring_pos = (self._ring_pos + 1) % _LATENCY_RING

    def add_reply(
        self, *, prompt_tokens: int, completion_tokens: int, latency: float, cached: int | None = None
    ) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if cached:
            self.cached_prompt_tokens += cached
        elif cached == 0:
            self.prompt_cache_misses += 1
        self.add_latency(latency)
        self.ctx_current = prompt_tokens + completion_tokens
        self.ctx_peak = max(self.ctx_peak, self.ctx_current)

    def count_outcome(self, ok: bool, cause: str | None = None) -> None:
        """One request finished: the runner's single place that records outcomes calls this."""
        if ok:
            self.completed += 1
        else:
            self.failures[cause or "unknown"] += 1

    def note_lanes(self, lanes: int, reason: str, at: float | None = None) -> None:
        self.lanes = lanes
        self.lanes_max = max(self.lanes_max, lanes)
        self.lanes_series.append([round(at if at is not None else time.time(), 3), lanes, reason])
        if len(self.lanes_series) > _LANES_SERIES_MAX:
            half = len(self.lanes_series) // 2
            self.lanes_series[:half] = self.lanes_series[:half:2]

    def note_vram(
        self,
        used_fraction: float | None,
        source: str | None,
        total: float | None = None,
        used_bytes: int | None = None,
        processes: list[list[int]] | None = None,
    ) -> None:
        self.vram_source = source
        if used_bytes is not None:
            self.vram_used_bytes = used_bytes
            self.vram_peak_bytes = max(self.vram_peak_bytes or 0, used_bytes)
        if processes is not None:
            self.vram_processes = processes
        if total is not None:
            self.vram_total = total
        if used_fraction is None:
            return
        self.vram_used = used_fraction
        self.vram_peak = max(self.vram_peak or 0.0, used_fraction)

    # -- persistence --------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        for key in _COUNTERS:
            state[key] = dict(getattr(self, key))
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> JobMetrics:
        m = cls()
        for key, value in state.items():
            if key in _COUNTERS:
                setattr(m, key, Counter(value))
            elif key == "latency_counts" and len(value) != len(m.latency_counts):
                continue  # saved with other buckets: start the histogram afresh
            elif hasattr(m, key) and not key.startswith("_"):
                setattr(m, key, value)
        return m

    # -- the metrics.json view ----------------------------------------------------

    def sections(self, *, done: int, elapsed: float) -> Summary:
        """The counters as ``metrics.json``'s typed sections (``done``: requests finished, for the rate)."""
        return Summary(
            tokens=Tokens.of(
                prompt=self.prompt_tokens,
                completion=self.completion_tokens,
                cached=self.cached_prompt_tokens,
                misses=self.prompt_cache_misses,
                isolated=self.isolated_prompt_tokens,
                chars_per_token=self.chars_per_token,
            ),
            context=Context.of(
                num_ctx=self.num_ctx,
                current=self.ctx_current,
                peak=self.ctx_peak,
                trim_at=self.trim_at,
                trims=dict(self.trims),
                truncations_detected=self.truncations_detected,
                conversation_not_paying=self.conversation_not_paying,
            ),
            vram=Vram(
                source=self.vram_source,
                used_fraction=self.vram_used,
                peak_fraction=self.vram_peak,
                used_bytes=self.vram_used_bytes,
                peak_bytes=self.vram_peak_bytes,
                total_bytes=self.vram_total,
                processes=self.vram_processes,
                pressure_events=self.vram_pressure_events,
                oom_events=self.oom_events,
                offload=self.offload,
                lanes=self.lanes,
                lanes_min=self.lanes_min,
            ),
            performance=Performance.of(
                elapsed=elapsed,
                done=done,
                prompt=self.prompt_tokens,
                completion=self.completion_tokens,
                latencies=self.latencies,
                requests_sent=self.requests_sent,
            ),
            server=Server(
                version=self.server_version,
                reloads=self.reloads,
                runner_options_stripped=self.runner_options_stripped,
                fingerprint=self.fingerprint,
                model_changes=self.model_changes,
            ),
            lanes=Lanes(
                mode=self.lanes_mode,
                current=self.lanes,
                min=self.lanes_min,
                max=self.lanes_max,
                changes=max(0, len(self.lanes_series) - 1),
            ),
            lanes_series=self.lanes_series,
            retries=Retries.of(dict(self.retries)),
            outages=Outages(count=self.outages, seconds=round(self.outage_seconds, 1)),
        )

    def summary(self, *, done: int, elapsed: float) -> dict[str, Any]:
        """``metrics.json``'s part after the job's header, as JSON-ready values."""
        return self.sections(done=done, elapsed=elapsed).to_json()
