"""Samples a process's RSS, open file descriptors and threads from /proc, once a second."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    threads: int


def read(pid: int) -> Sample | None:
    try:
        status = open(f"/proc/{pid}/status").read()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields.get("VmRSS", "0 kB").split()[0])
    return Sample(time.monotonic(), rss_kb / 1024, fds, int(fields["Threads"].strip()))


@dataclass
class Sampler:
    pid: int
    interval: float = 1.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            s = read(self.pid)
            if s is not None:
                self.samples.append(s)
            self._stop.wait(self.interval)

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join()
        return self.samples


def slope_mb_per_min(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over time, in MB per minute."""
    if len(samples) < 3:
        return 0.0
    ts = [s.t for s in samples]
    ys = [s.rss_mb for s in samples]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    return 0.0 if var == 0 else 60 * sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var


def quarter_medians(samples: list[Sample], attr: str) -> tuple[float, float]:
    """Median of the first and the last quarter of a series (robust to one-off spikes)."""
    vals = [getattr(s, attr) for s in samples]
    q = max(1, len(vals) // 4)
    first, last = sorted(vals[:q]), sorted(vals[-q:])
    return first[len(first) // 2], last[len(last) // 2]
