"""VRAM sources behind one interface (a fake NVML, the emulator's /api/ps) and the policy."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from batchd.backends.ollama import OllamaBackend
from batchd.config import Settings, VramSettings
from batchd.metrics import JobMetrics
from batchd.run.vram import (
    NoneSource,
    NvmlSource,
    OllamaPsSource,
    VramPolicy,
    VramReading,
    VramWatch,
    pick_source,
    probe_nvml,
)
from tests.support.emulator import Emulator
from tests.support.fakes import GB, FakeNvml


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_nvml_v2_leaves_the_driver_reserve_out() -> None:
    nvml = FakeNvml()
    source = NvmlSource(0, nvml=nvml)
    reading = run(source.read())
    assert reading == VramReading(
        used_bytes=10 * GB, total_bytes=79 * GB, source="nvml", processes=((4242, 8 * GB), (77, 0))
    )
    assert reading.fraction == pytest.approx(10 / 79)
    source.close()
    assert nvml.shutdowns == 1


def test_nvml_without_v2_falls_back_and_read_errors_give_none() -> None:
    nvml = FakeNvml(v2=False)
    source = NvmlSource(1, nvml=nvml)
    assert run(source.read()).used_bytes == 11 * GB
    nvml.fail_reads = True
    assert run(source.read()) is None


def test_probe_nvml_describes_the_card() -> None:
    text = probe_nvml(0, nvml=FakeNvml())
    assert "NVIDIA H200" in text and "580.95" in text and "reserved" in text and "2 compute" in text
    with pytest.raises(FakeNvml.NVMLError):
        probe_nvml(0, nvml=FakeNvml(fail_init=True))


def test_ollama_ps_reports_vram_and_cpu_offload() -> None:
    async def go(emu: Emulator) -> tuple[VramReading | None, VramReading | None]:
        backend = OllamaBackend(url=emu.url)
        try:
            source = OllamaPsSource(backend)
            emu.set_ps(size=6 * GB, size_vram=4 * GB)
            first = await source.read()
            emu.down()
            return first, await source.read()
        finally:
            await backend.aclose()

    with Emulator() as emu:
        reading, gone = run(go(emu))
    assert reading is not None and reading.used_bytes == 4 * GB and reading.fraction is None
    assert reading.offload == {
        "model": "gemma3:4b",
        "size": 6 * GB,
        "size_vram": 4 * GB,
        "cpu_bytes": 2 * GB,
        "gpu_fraction": pytest.approx(0.6667, abs=1e-4),
    }
    assert gone is None  # a server that is down is no reading, not an error


@pytest.mark.parametrize(
    ("wanted", "nvml_works", "kind", "expected"),
    [
        ("auto", True, "ollama", NvmlSource),
        ("auto", False, "ollama", OllamaPsSource),
        ("auto", False, "openai", NoneSource),
        ("ollama", True, "ollama", OllamaPsSource),
        ("nvml", False, "ollama", NoneSource),
        ("none", True, "ollama", NoneSource),
    ],
)
def test_pick_source(wanted: str, nvml_works: bool, kind: str, expected: type) -> None:
    backend = SimpleNamespace(kind=kind, host="http://gpu-box:11434")
    settings = Settings(vram=VramSettings.model_validate({"source": wanted}))
    source = pick_source(settings, backend, nvml=FakeNvml(fail_init=not nvml_works))
    assert type(source) is expected


def test_policy_steps_lanes_down_above_high_water_and_restores_below_low() -> None:
    p = VramPolicy(high_water=0.92, low_water=0.80, lanes=4, step_seconds=10)
    assert p.update(0.50, now=0) is False and p.lanes == 4
    assert p.update(0.95, now=1) is True and p.pressure and p.lanes == 3
    assert p.update(0.95, now=5) is False and p.lanes == 3  # not yet another step
    assert p.update(0.96, now=11) is True and p.lanes == 2
    assert p.update(0.85, now=30) is False and p.pressure  # between the marks: hold
    assert p.update(None, now=31) is False
    assert p.update(0.50, now=32) is True and not p.pressure and p.lanes == 4


def test_policy_never_goes_below_one_lane() -> None:
    p = VramPolicy(high_water=0.9, low_water=0.8, lanes=1, step_seconds=0)
    assert p.update(0.99, now=0) is True and p.pressure and p.lanes == 1
    assert p.update(0.99, now=100) is False and p.lanes == 1


class Fraction:
    """A GpuMemory whose fraction the test sets."""

    name = "fake"
    interval = 1.0

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    async def read(self) -> VramReading | None:
        return VramReading(used_bytes=int(self.fraction * 100), total_bytes=100, source=self.name)

    def close(self) -> None:
        pass


def test_watch_reads_at_the_source_pace_and_records_metrics() -> None:
    gpu = Fraction(0.5)
    metrics = JobMetrics(lanes=2, lanes_min=2)
    watch = VramWatch(source=gpu, policy=VramPolicy(high_water=0.9, low_water=0.8, lanes=2), metrics=metrics)

    def poll(now: float) -> bool:
        return run(watch.poll(now))

    assert poll(0.0) is False and metrics.vram_used == 0.5 and metrics.vram_source == "fake"
    gpu.fraction = 0.95
    assert poll(0.5) is False  # too soon for this source
    assert poll(1.0) is True and metrics.lanes == 1 and metrics.lanes_min == 1
    assert metrics.vram_peak == 0.95 and metrics.vram_pressure_events == 1
    gpu.fraction = 0.3
    assert poll(2.0) is True and metrics.lanes == 2 and metrics.lanes_min == 1 and metrics.vram_used == 0.3
