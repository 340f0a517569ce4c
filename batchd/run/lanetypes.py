"""The lanes controller's words: why a limit changed (``Reason``), how a call went (``Outcome``), a
``Change``, the ``Ticket`` a request carries, and the controller's bounds and constants (``LaneTuning``).

Kept apart from ``lanes.LaneController`` (which re-exports them) so the runner's pools, the
metrics and the tests name them without the controller's logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from batchd.errors import BackendBusy, BackendOutOfMemory, BackendTimeout


class Reason(str, Enum):
    GROW = "grow"
    THROUGHPUT = "throughput"
    PROBE = "probe"
    QUEUEING = "queueing"
    BUSY = "busy"
    TIMEOUT = "timeout"
    VRAM = "vram"
    SCAN = "scan"  #: a step of the knee scan
    KNEE = "knee"  #: the scan's verdict: the lowest limit within 5% of the best throughput it saw


class Outcome(str, Enum):
    OK = "ok"
    BUSY = "busy"  #: 503 / 429: the server says it is full
    TIMEOUT = "timeout"
    ERROR = "error"  #: anything else: no latency sample, no decision

    @classmethod
    def of(cls, exc: BaseException | None) -> Outcome:
        """How a call went: 503/429 and OOM are busy, a timeout a timeout, any other failure an error."""
        if exc is None:
            return cls.OK
        if isinstance(exc, (BackendBusy, BackendOutOfMemory)):
            return cls.BUSY
        return cls.TIMEOUT if isinstance(exc, BackendTimeout) else cls.ERROR


@dataclass(frozen=True)
class Change:
    at: float
    old: int
    new: int
    reason: Reason
    #: the window's figures behind the decision (None for immediate back-offs)
    latency: float | None = None
    floor: float | None = None
    rate: float | None = None


@dataclass(frozen=True)
class LaneTuning:
    """The controller's bounds and constants (the module docstring says what each one does)."""

    lanes_min: int = 1
    lanes_max: int = 64
    #: completed requests a window needs at least (and at least the limit)
    min_samples: int = 16
    grow_ratio: float = 1.15
    shrink_ratio: float = 1.4
    target_ratio: float = 1.1
    busy_factor: float = 0.7
    timeout_factor: float = 0.5
    vram_factor: float = 0.75
    #: windows before climbing back onto a ceiling; doubled by every undone step, up to cooldown_max
    cooldown: int = 4
    cooldown_max: int = 64
    #: windows held before one step up is probed
    explore: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.lanes_min <= self.lanes_max:
            raise ValueError(f"need 1 <= lanes_min ({self.lanes_min}) <= lanes_max ({self.lanes_max})")


@dataclass(frozen=True)
class Ticket:
    """Handed out by ``start()``, given back to ``done()``."""

    epoch: int
    started: float
