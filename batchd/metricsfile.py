"""``metrics.json``'s shape: one frozen dataclass per section, fields in the file's key order.

``JobMetrics.summary`` fills the sections from its counters; the outbox puts the job's
``Header`` in front (``MetricsFile``). Each section's ``of`` holds its derived figures (the
rounding, the rates, the estimates), so a field's rule sits beside its name. The JSON is a
published format: renaming or reordering a field changes every reader's file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Tokens:
    prompt: int
    completion: int
    total: int
    prompt_cached_estimate: int
    prompt_cache_misses: int
    prompt_evaluated_estimate: int
    isolated_prompt_estimate: int
    saved_vs_isolated_estimate: int
    saved_fraction: float | None
    chars_per_token: float | None

    @classmethod
    def of(
        cls, *, prompt: int, completion: int, cached: int, misses: int, isolated: int, chars_per_token: float | None
    ) -> Tokens:
        # What the server had to evaluate (prompt minus what its cache held) against what the
        # same requests would have cost sent one by one with their whole prefix and no cache.
        evaluated = max(0, prompt - cached)
        saved = isolated - evaluated if isolated else 0
        return cls(
            prompt=prompt,
            completion=completion,
            total=prompt + completion,
            prompt_cached_estimate=cached,
            prompt_cache_misses=misses,
            prompt_evaluated_estimate=evaluated,
            isolated_prompt_estimate=isolated,
            saved_vs_isolated_estimate=saved,
            saved_fraction=round(saved / isolated, 4) if isolated else None,
            chars_per_token=chars_per_token,
        )


@dataclass(frozen=True)
class Context:
    num_ctx: int | None
    current: int
    peak: int
    utilisation: float | None
    utilisation_peak: float | None
    trim_at: float | None
    trims: dict[str, int]
    trims_total: int
    truncations_detected: int
    conversation_not_paying: dict[str, Any] | None

    @classmethod
    def of(
        cls,
        *,
        num_ctx: int | None,
        current: int,
        peak: int,
        trim_at: float | None,
        trims: dict[str, int],
        truncations_detected: int,
        conversation_not_paying: dict[str, Any] | None,
    ) -> Context:
        return cls(
            num_ctx=num_ctx,
            current=current,
            peak=peak,
            utilisation=round(current / num_ctx, 4) if num_ctx else None,
            utilisation_peak=round(peak / num_ctx, 4) if num_ctx else None,
            trim_at=trim_at,
            trims=trims,
            trims_total=sum(trims.values()),
            truncations_detected=truncations_detected,
            conversation_not_paying=conversation_not_paying,
        )


@dataclass(frozen=True)
class Vram:
    source: str | None
    used_fraction: float | None
    peak_fraction: float | None
    used_bytes: int | None
    peak_bytes: int | None
    total_bytes: float | None
    processes: list[list[int]] | None
    pressure_events: int
    oom_events: int
    offload: dict[str, Any] | None
    lanes: int
    lanes_min: int


@dataclass(frozen=True)
class Performance:
    elapsed_seconds: float
    requests_per_second: float | None
    prompt_tokens_per_second: float | None
    completion_tokens_per_second: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_max: float | None
    requests_sent: int

    @classmethod
    def of(
        cls, *, elapsed: float, done: int, prompt: int, completion: int, latencies: list[float], requests_sent: int
    ) -> Performance:
        lat = sorted(latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 4) if lat else None

        def rate(n: int, digits: int) -> float | None:
            return round(n / elapsed, digits) if elapsed > 0 else None

        return cls(
            elapsed_seconds=round(elapsed, 3),
            requests_per_second=rate(done, 3),
            prompt_tokens_per_second=rate(prompt, 2),
            completion_tokens_per_second=rate(completion, 2),
            latency_p50=pct(0.50),
            latency_p95=pct(0.95),
            latency_max=round(lat[-1], 4) if lat else None,
            requests_sent=requests_sent,
        )


@dataclass(frozen=True)
class Server:
    version: str | None
    reloads: int
    runner_options_stripped: list[str]
    #: ``{"id": "fp_...", "details": {...}}`` (``run.fingerprints``); None where the backend cannot tell
    fingerprint: dict[str, Any] | None = None
    model_changes: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Lanes:
    mode: str
    current: int
    min: int
    max: int
    #: changes of the limit after the start (the series' first entry is the start)
    changes: int


@dataclass(frozen=True)
class Retries:
    total: int
    by_cause: dict[str, int]

    @classmethod
    def of(cls, by_cause: dict[str, int]) -> Retries:
        return cls(total=sum(by_cause.values()), by_cause=by_cause)


@dataclass(frozen=True)
class Outages:
    count: int
    seconds: float


@dataclass(frozen=True)
class Summary:
    """What a job's counters say, the part of ``metrics.json`` after the job's header."""

    tokens: Tokens
    context: Context
    vram: Vram
    performance: Performance
    server: Server
    lanes: Lanes
    #: ``[[unix time, lanes, reason], ...]``
    lanes_series: list[list[Any]]
    retries: Retries
    outages: Outages

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Header:
    """The job the file is about; the last three keys appear only when the job has them."""

    job_id: str
    input: str | None
    sha256: str | None
    source: str | None
    pipeline: str | None
    model: str | None
    requested_model: str | None
    mode: str | None
    status: str
    request_counts: dict[str, int]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    error: dict[str, Any] | None = None
    duplicate_of: str | None = None
    retry_of: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for optional in ("error", "duplicate_of", "retry_of"):
            if not out[optional]:
                del out[optional]
        return out


@dataclass(frozen=True)
class MetricsFile:
    """The whole ``metrics.json``: a rejected file or a duplicate has the header alone."""

    header: Header
    summary: Summary | None

    def to_json(self) -> dict[str, Any]:
        out = self.header.to_json()
        if self.summary is not None:
            out.update(self.summary.to_json())
        return out
