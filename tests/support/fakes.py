"""Fakes for the GPU: ``FakeGpu`` (a GpuMemory whose used fraction the test sets) and ``FakeNvml`` (stands in
for the ``pynvml`` module)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from batchd.run.vram import VramReading

GB = 1_000_000_000


class FakeGpu:
    """A GpuMemory whose used fraction the test sets (what a fake NVML would report)."""

    name = "nvml"
    interval = 0.02

    def __init__(self, fraction: float = 0.5) -> None:
        self.fraction = fraction
        self.closed = False

    async def read(self) -> VramReading | None:
        total = 16 * 1024**3
        return VramReading(used_bytes=int(self.fraction * total), total_bytes=total, source=self.name)

    def close(self) -> None:
        self.closed = True


class FakeNvml:
    """Stands in for the ``pynvml`` module: the calls NvmlSource makes, nothing else."""

    class NVMLError(Exception):
        pass

    def __init__(
        self, *, used: int = 10 * GB, total: int = 80 * GB, reserved: int = GB, v2: bool = True, fail_init: bool = False
    ) -> None:
        self.used, self.total, self.reserved = used, total, reserved
        self.fail_init = fail_init
        self.fail_reads = False
        self.inits = 0
        self.shutdowns = 0
        if v2:
            self.nvmlMemory_v2 = 0x02000028

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlDeviceGetMemoryInfo(self, handle: str, version: int | None = None) -> Any:
        if self.fail_reads:
            raise self.NVMLError("GPU is lost")
        if version is None:  # v1 counts the driver's reserve as used
            return SimpleNamespace(
                used=self.used + self.reserved, total=self.total, free=self.total - self.used - self.reserved
            )
        return SimpleNamespace(
            used=self.used, total=self.total, reserved=self.reserved, free=self.total - self.used - self.reserved
        )

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[Any]:
        return [SimpleNamespace(pid=4242, usedGpuMemory=8 * GB), SimpleNamespace(pid=77, usedGpuMemory=None)]

    def nvmlDeviceGetName(self, handle: str) -> bytes:
        return b"NVIDIA H200"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.95"
