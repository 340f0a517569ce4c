"""The outage gate and the retry backoff on a fake clock: the timing rules in milliseconds, not real seconds."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from batchd.config import Settings
from batchd.errors import BackendBusy, BackendServerError, BackendUnavailable, BadRequest, ModelNotFound
from batchd.metrics import JobMetrics
from batchd.run.attempts import Backoff
from batchd.run.outage import Gate


class FakeClock:
    """Time moves only when the code under test sleeps; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would


class ScriptedBackend:
    """``ping()`` raises the scripted exceptions in turn, then answers."""

    host = "http://llm.test"

    def __init__(self, *answers: Exception) -> None:
        self.answers = list(answers)
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1
        if self.answers:
            raise self.answers.pop(0)


def run_outage(
    backend: ScriptedBackend, *, max_wait: float = 30.0, on_fatal: Callable[[Exception], None] | None = None
) -> tuple[Gate, FakeClock, JobMetrics]:
    clock, metrics = FakeClock(), JobMetrics()

    async def go() -> Gate:
        gate = Gate(
            backend,
            sleep=clock.sleep,
            clock=clock,
            metrics=metrics,  # type: ignore[arg-type]
            max_wait=max_wait,
            on_fatal=on_fatal,
        )
        gate.close("connection refused")
        assert not gate.is_open and gate.down_since == 1000.0
        await asyncio.wait_for(gate.wait(), timeout=5)  # real seconds: only a bug would take long
        return gate

    return asyncio.run(go()), clock, metrics


def test_the_prober_backs_off_doubling_up_to_its_cap_and_opens_when_the_server_answers() -> None:
    refused = [BackendUnavailable("refused") for _ in range(8)]
    gate, clock, metrics = run_outage(ScriptedBackend(*refused), max_wait=10.0)
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]
    assert gate.is_open and gate.probes == 9 and gate.down_since is None
    assert metrics.outages == 1 and metrics.outage_seconds == pytest.approx(sum(clock.sleeps))


def test_a_5xx_or_a_bug_while_probing_keeps_probing() -> None:
    # Every kind of "not yet": a 500 from a proxy, and an exception nobody expected (the prober must never die).
    gate, clock, _ = run_outage(
        ScriptedBackend(BackendServerError("bad gateway", status_code=502), RuntimeError("bug in a probe"))
    )
    assert gate.is_open and clock.sleeps == [0.5, 1.0, 2.0]


def test_a_model_gone_during_the_outage_ends_the_wait_through_on_fatal() -> None:
    fatal: list[Exception] = []
    gate, clock, _ = run_outage(
        ScriptedBackend(BackendUnavailable("refused"), ModelNotFound("model 'x' not found")), on_fatal=fatal.append
    )
    assert [type(e) for e in fatal] == [ModelNotFound]
    assert gate.is_open and clock.sleeps == [0.5, 1.0]  # no further probing: the job decides


def test_a_400_to_the_probe_means_the_server_is_up() -> None:
    gate, clock, _ = run_outage(ScriptedBackend(BadRequest("no such route")))
    assert gate.is_open and clock.sleeps == [0.5]


def test_closing_a_closed_gate_changes_nothing() -> None:
    async def go() -> None:
        clock, metrics = FakeClock(), JobMetrics()
        gate = Gate(
            ScriptedBackend(BackendUnavailable("x")),
            sleep=clock.sleep,
            clock=clock,  # type: ignore[arg-type]
            metrics=metrics,
        )
        gate.close("first")
        clock.now += 5
        gate.close("second")
        assert gate.down_since == 1000.0 and gate.reason == "first" and metrics.outages == 1
        gate.cancel()

    asyncio.run(go())


def backoff_runner(*, base: float = 1.0, cap: float = 60.0, seed: int = 7) -> Backoff:
    # Only the retry rule is under test: the backoff the runner builds from these settings.
    settings = Settings(backend={"backoff_seconds": base, "backoff_max_seconds": cap})
    return Backoff(
        base=settings.backend.backoff_seconds, cap=settings.backend.backoff_max_seconds, rng=random.Random(seed)
    )


def test_backoff_doubles_with_jitter_and_stops_at_the_cap() -> None:
    runner = backoff_runner(base=1.0, cap=60.0)
    for attempts in range(1, 12):
        delay = runner.delay(attempts, BackendServerError("500"))
        nominal = min(60.0, 2.0 ** (attempts - 1))
        assert 0.5 * nominal <= delay < 1.5 * nominal  # jitter spreads lanes that failed together


def test_backoff_honours_retry_after_within_the_cap() -> None:
    runner = backoff_runner(base=0.1, cap=30.0)
    assert runner.delay(1, BackendBusy("busy", retry_after=12.0)) == 12.0
    assert runner.delay(1, BackendBusy("busy", retry_after=3600.0)) == 30.0  # a hostile header is capped
    assert runner.delay(1, BackendBusy("busy")) < 0.15
