"""How full the GPU is, and what the loop does about it.

Sources behind one small interface (``GpuMemory.read() -> VramReading``):
``NvmlSource`` reads the card through NVML (``nvidia-ml-py``, module
``pynvml``) when batchd runs on the GPU host; ``OllamaPsSource`` reads the
server's ``/api/ps`` (VRAM held by loaded models, and CPU offload) when the GPU
is remote; ``NoneSource`` knows nothing. ``pick_source`` chooses per
``vram.source``. ``VramPolicy`` turns readings into "trim aggressively, one
lane fewer" above ``high_water`` and "restore" below ``low_water``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from batchd.backends.base import Backend
from batchd.config import Settings
from batchd.errors import BatchdError
from batchd.metrics import JobMetrics

log = structlog.get_logger("batchd.vram")

GIB = 1024**3


@dataclass(frozen=True)
class VramReading:
    used_bytes: int
    #: None when the source cannot tell the card's size (``/api/ps``)
    total_bytes: int | None
    source: str
    #: ``(pid, bytes)`` of each compute process on the card (NVML)
    processes: tuple[tuple[int, int], ...] = ()
    #: a model partly in system RAM (``/api/ps`` ``size_vram < size``)
    offload: dict[str, Any] | None = None

    @property
    def fraction(self) -> float | None:
        if not self.total_bytes:
            return None
        return min(1.0, self.used_bytes / self.total_bytes)


class GpuMemory(Protocol):
    name: str
    #: seconds between reads worth doing (NVML is ~7 us a call, /api/ps is an HTTP round trip)
    interval: float

    async def read(self) -> VramReading | None:
        """The current use, or None when it cannot be read right now."""
        ...

    def close(self) -> None: ...


class NoneSource:
    name = "none"
    interval = 5.0

    async def read(self) -> VramReading | None:
        return None

    def close(self) -> None:
        pass


class NvmlSource:
    """One GPU through NVML. ``nvml`` is the ``pynvml`` module, or a fake in tests."""

    name = "nvml"
    interval = 1.0

    def __init__(self, gpu_index: int = 0, *, nvml: Any = None) -> None:
        if nvml is None:
            import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]  # lazy: GPU hosts only (nvidia-ml-py)

            nvml = pynvml
        self._nvml = nvml
        nvml.nvmlInit()
        try:
            self._handle = nvml.nvmlDeviceGetHandleByIndex(gpu_index)
        except Exception:
            nvml.nvmlShutdown()
            raise
        self.gpu_index = gpu_index
        self._warned = False

    def memory(self) -> tuple[int, int, int]:
        """(used, total, reserved) bytes; ``used`` leaves out what the driver reserves."""
        nvml = self._nvml
        v2 = getattr(nvml, "nvmlMemory_v2", None)
        if v2 is not None:
            with contextlib.suppress(Exception):  # old drivers lack v2; v1 counts the reserve as used
                info = nvml.nvmlDeviceGetMemoryInfo(self._handle, version=v2)
                reserved = int(getattr(info, "reserved", 0) or 0)
                return int(info.used), int(info.total) - reserved, reserved
        info = nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return int(info.used), int(info.total), 0

    def processes(self) -> tuple[tuple[int, int], ...]:
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception:  # noqa: BLE001 - per-process use is a nicety; some drivers refuse it
            return ()
        return tuple((int(p.pid), int(p.usedGpuMemory or 0)) for p in procs)

    async def read(self) -> VramReading | None:
        # pynvml raises its own NVMLError family; none of it may stop a job.
        try:
            used, total, _ = self.memory()
        except Exception as exc:  # noqa: BLE001
            if not self._warned:
                log.warning("vram_read_failed", source=self.name, error=str(exc))
                self._warned = True
            return None
        return VramReading(used_bytes=used, total_bytes=total, source=self.name, processes=self.processes())

    def close(self) -> None:
        with contextlib.suppress(Exception):  # shutting down a library that is already gone
            self._nvml.nvmlShutdown()


class OllamaPsSource:
    """VRAM held by the server's loaded models, from ``/api/ps``; reveals CPU offload."""

    name = "ollama"
    interval = 5.0

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._offload_seen: tuple[str, int, int] | None = None

    async def read(self) -> VramReading | None:
        try:
            models = await self.backend.loaded()
        except BatchdError:
            return None
        offload = None
        for m in models:
            if m.size and m.size_vram < m.size:
                offload = {
                    "model": m.name,
                    "size": m.size,
                    "size_vram": m.size_vram,
                    "cpu_bytes": m.size - m.size_vram,
                    "gpu_fraction": round(m.size_vram / m.size, 4),
                }
                key = (m.name, m.size, m.size_vram)
                if key != self._offload_seen:
                    self._offload_seen = key
                    log.warning(
                        "model_offloaded",
                        model=m.name,
                        size=m.size,
                        size_vram=m.size_vram,
                        cpu_bytes=m.size - m.size_vram,
                        gpu_percent=round(100 * m.size_vram / m.size, 1),
                    )
                break
        return VramReading(
            used_bytes=sum(m.size_vram for m in models), total_bytes=None, source=self.name, offload=offload
        )

    def close(self) -> None:
        pass


def pick_source(settings: Settings, backend: Backend | None, *, nvml: Any = None) -> GpuMemory:
    """The source ``vram.source`` names; ``auto`` takes the first that works and logs which."""
    wanted = settings.vram.source
    tried: dict[str, str] = {}
    if wanted in ("auto", "nvml"):
        try:
            source: GpuMemory = NvmlSource(settings.vram.gpu_index, nvml=nvml)
            log.info("vram_source", source="nvml", gpu_index=settings.vram.gpu_index)
            return source
        except Exception as exc:  # noqa: BLE001 - ImportError, OSError or pynvml's NVMLError family
            tried["nvml"] = f"{type(exc).__name__}: {exc}"
    if wanted in ("auto", "ollama") and backend is not None and getattr(backend, "kind", "") == "ollama":
        log.info("vram_source", source="ollama", host=backend.host, tried=tried or None)
        return OllamaPsSource(backend)
    if wanted == "ollama":
        tried["ollama"] = "the backend is not Ollama"
    level = log.warning if wanted != "auto" else log.info
    level("vram_source", source="none", wanted=wanted, tried=tried or None)
    return NoneSource()


class VramPolicy:
    """Above ``high_water``: aggressive trimming and one lane fewer (again every ``step_seconds``
    while it stays there, never below one); at or below ``low_water``: everything restored."""

    def __init__(self, *, high_water: float, low_water: float, lanes: int, step_seconds: float = 15.0) -> None:
        self.high_water = high_water
        self.low_water = min(low_water, high_water)
        self.max_lanes = lanes
        self.lanes = lanes
        self.pressure = False
        self.step_seconds = step_seconds
        self._stepped_at = 0.0

    def update(self, fraction: float | None, now: float) -> bool:
        """Take one reading; True when lanes or pressure changed."""
        if fraction is None:
            return False
        if fraction > self.high_water:
            if not self.pressure:
                self.pressure = True
                self.lanes = max(1, self.lanes - 1)
                self._stepped_at = now
                return True
            if self.lanes > 1 and now - self._stepped_at >= self.step_seconds:
                self.lanes -= 1
                self._stepped_at = now
                return True
            return False
        if self.pressure and fraction <= self.low_water:
            self.pressure = False
            self.lanes = self.max_lanes
            return True
        return False


class VramWatch:
    """Reads a source at its own pace, keeps the metrics, runs the policy (the runner applies it)."""

    #: seconds between /api/ps looks for CPU offload when another source reads the card
    OFFLOAD_SECONDS = 30.0

    def __init__(
        self, *, source: GpuMemory, policy: VramPolicy, metrics: JobMetrics, offload: OllamaPsSource | None = None
    ) -> None:
        self.source = source
        self.policy = policy
        self.metrics = metrics
        self.offload = offload
        self._next = 0.0
        self._next_offload = 0.0
        metrics.vram_source = source.name

    async def poll(self, now: float) -> bool:
        """True when the policy changed lanes or pressure."""
        if self.offload is not None and now >= self._next_offload:
            self._next_offload = now + self.OFFLOAD_SECONDS
            ps = await self.offload.read()
            if ps is not None and ps.offload is not None:
                self.metrics.offload = ps.offload
        if now < self._next:
            return False
        self._next = now + self.source.interval
        reading = await self.source.read()
        if reading is None:
            return False
        m = self.metrics
        m.note_vram(
            reading.fraction,
            reading.source,
            total=reading.total_bytes,
            used_bytes=reading.used_bytes,
            processes=[list(p) for p in reading.processes] or None,
        )
        if reading.offload is not None:
            m.offload = reading.offload
        was = self.policy.pressure
        if not self.policy.update(reading.fraction, now):
            return False
        if self.policy.pressure and not was:
            m.vram_pressure_events += 1
        m.lanes = self.policy.lanes
        m.lanes_min = min(m.lanes_min, self.policy.lanes)
        log.warning(
            "vram_pressure" if self.policy.pressure else "vram_relieved",
            used_fraction=round(reading.fraction or 0.0, 4),
            lanes=self.policy.lanes,
            max_lanes=self.policy.max_lanes,
            processes=m.vram_processes,
        )
        return True


def probe_nvml(gpu_index: int = 0, *, nvml: Any = None) -> str:
    """One line about the card for ``batchd doctor``; raises when NVML is unusable."""
    source = NvmlSource(gpu_index, nvml=nvml)
    try:
        n = source._nvml
        name = n.nvmlDeviceGetName(source._handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
        try:
            driver = n.nvmlSystemGetDriverVersion()
            driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        except Exception:  # noqa: BLE001 - the version is only decoration
            driver = "?"
        used, total, reserved = source.memory()
        procs = source.processes()
        return (
            f"GPU {gpu_index} {name} (driver {driver}): {used / GIB:.1f} of {total / GIB:.1f} GiB used"
            f" ({reserved / GIB:.1f} GiB reserved by the driver), {len(procs)} compute process(es)"
        )
    finally:
        source.close()
