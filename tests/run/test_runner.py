"""JobRunner against the emulator: lanes, VRAM policy with a fake GPU, OOM and overflow learning, samples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from batchd.config import Settings
from batchd.journal import ReqState
from batchd.metrics import JobMetrics
from batchd.run.runner import JobRunner
from tests.support.emulator import Emulator, count_tokens
from tests.support.fakes import FakeGpu
from tests.support.runs import RunnerFactory
from tests.support.waiting import until


def test_k_lanes_keep_k_server_slots_busy(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    emulator.latency, emulator.slots = 0.03, 3
    settings = make_settings(backend={"lanes": 3}, context={"mode": "isolated"})
    runner, outcome, journal = make_runner.run_job(settings, 30)
    assert outcome == "completed" and runner.done == 30
    assert emulator.peak_concurrency == 3
    assert len(emulator.calls) == 30


def test_vram_pressure_pauses_a_lane_goes_aggressive_and_recovers(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    emulator.latency = 0.01
    gpu = FakeGpu(0.5)
    settings = make_settings(backend={"lanes": 3}, context={"num_ctx": 8192})
    seen: dict[str, Any] = {}

    async def scenario(r: JobRunner) -> None:
        await until(lambda: r.done >= 9)  # histories have grown
        gpu.fraction = 0.95
        await until(lambda: r.active_lanes == 2 and r.budget is not None and r.budget.pressure)
        assert r.budget is not None and r.budget.strategy == "aggressive"
        await until(lambda: r.in_flight <= 2)  # the third lane finished its request and paused
        emulator.reset_calls()
        await until(lambda: len(emulator.calls) >= 12)
        seen["calls"] = [len(c["messages"]) for c in emulator.calls]
        seen["peak"] = emulator.peak_concurrency
        gpu.fraction = 0.5
        await until(lambda: r.active_lanes == 3 and r.budget is not None and not r.budget.pressure)
        emulator.reset_calls()
        await until(lambda: emulator.peak_concurrency == 3)
        r.stop.set()

    runner, outcome, journal = make_runner.run_job(settings, 800, gpu=gpu, scenario=scenario)
    assert outcome == "interrupted"
    assert seen["peak"] <= 2
    assert all(n == 2 for n in seen["calls"][2:])  # system prompt + the request, nothing kept
    m = runner.metrics
    assert m.trims["aggressive"] >= 1 and m.lanes_min == 2 and m.lanes == 3
    assert m.vram_pressure_events == 1 and m.vram_peak == pytest.approx(0.95) and m.vram_source == "nvml"
    assert gpu.closed is False  # an injected source belongs to the caller
    assert journal.counts(runner.job.id).get("running", 0) == 0  # nothing left half-taken


def test_oom_trims_aggressively_backs_off_and_counts(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    settings = make_settings(context={"num_ctx": 8192})
    # the 4th call fails (injected before the job starts: waiting for progress first raced a fast job)
    emulator.fail_next(500, count=1, after=3)  # "llama runner process has terminated"

    runner, outcome, journal = make_runner.run_job(settings, 12)
    assert outcome == "completed" and runner.done == 12
    assert runner.metrics.oom_events == 1 and runner.metrics.retries["oom"] == 1
    assert runner.metrics.trims["aggressive"] == 1
    after = emulator.calls.index(next(c for c in emulator.calls[3:] if len(c["messages"]) == 2))
    assert after > 3  # the retry after the OOM went out without the history


def test_overflow_400_trims_harder_retries_and_lowers_the_trigger(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    emulator.context_length = 512  # the server's window is smaller than the num_ctx batchd pins
    settings = make_settings(context={"num_ctx": 1024, "num_predict": 32})
    runner, outcome, journal = make_runner.run_job(settings, 30, size=160)
    assert outcome == "completed" and runner.done == 30 and runner.failed == 0
    m = runner.metrics
    assert m.retries["context_overflow"] >= 1
    assert m.trim_at is not None and m.trim_at < 0.75
    ok = [c for c in emulator.calls if count_tokens(c["messages"]) <= 512]
    assert len(emulator.calls) - len(ok) == m.retries["context_overflow"]
    assert {c["options"]["num_ctx"] for c in emulator.calls} == {1024}


def test_samples_and_metrics_are_persisted(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    settings = make_settings(backend={"lanes": 2})
    emulator.set_ps(size=6_000_000_000, size_vram=4_500_000_000)  # the model spills into system RAM
    runner, outcome, journal = make_runner.run_job(settings, 20)
    assert runner.metrics.offload is not None and runner.metrics.offload["cpu_bytes"] == 1_500_000_000
    assert outcome == "completed"
    samples = journal.samples(runner.job.id)
    assert samples and samples[-1].done == 20 and samples[-1].lanes == 2 and samples[-1].vram_used == pytest.approx(0.5)
    job = journal.job(runner.job.id)
    assert job is not None
    restored = JobMetrics.from_state(job.metrics["state"])
    assert restored.prompt_tokens == runner.metrics.prompt_tokens > 0
    assert restored.trims == runner.metrics.trims and restored.vram_source == "nvml"
    assert restored.isolated_prompt_tokens > 0 and restored.chars_per_token
    assert journal.counts(runner.job.id) == {ReqState.DONE.value: 20}


def test_metrics_state_round_trip_keeps_counting() -> None:
    m = JobMetrics(lanes=4, lanes_min=2)
    m.trims["sliding"] += 3
    m.retries["oom"] += 1
    m.add_reply(prompt_tokens=100, completion_tokens=10, latency=0.2)
    m.note_vram(0.9, "nvml", total=100.0, used_bytes=90, processes=[[1, 90]])
    again = JobMetrics.from_state(orjson.loads(orjson.dumps(m.to_state())))
    again.add_reply(prompt_tokens=50, completion_tokens=5, latency=0.4)
    again.trims["sliding"] += 1
    s = again.summary(done=2, elapsed=1.0)
    assert s["tokens"]["prompt"] == 150 and s["context"]["trims"] == {"sliding": 4}
    assert s["vram"]["peak_fraction"] == 0.9 and s["vram"]["lanes_min"] == 2
    assert s["retries"]["by_cause"] == {"oom": 1}
    assert s["performance"]["latency_max"] == 0.4 and s["performance"]["requests_per_second"] == 2.0
