"""What ``status/`` may see of the running daemon: a narrow, read-only state, never the daemon itself.

As uvicorn hands its protocols a small ``ServerState`` and never the ``Server``, the daemon (the
top layer) hands ``live.LiveViews`` a ``StatusState``: the settings, a frozen ``JobProgress`` of
the running job taken each tick, the jobs done, its clock and a way to ask the backend whether
it answers. Nothing in ``status/`` imports the daemon, the runner or the operator commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from batchd.config import Settings
from batchd.metrics import JobMetrics
from batchd.storage import DiskWatch


@dataclass(frozen=True)
class JobProgress:
    """The running job at one tick: what the gauges and the status files show of it."""

    job_id: str
    #: the job's counters (the runner's own object: read it, never write it)
    metrics: JobMetrics
    lanes: int
    lanes_active: int
    #: requests in flight to the backend
    in_flight: int
    cancelled: bool
    #: the outage gate's: when (on the daemon's clock) the backend stopped answering, else None
    down_since: float | None
    backend_up: bool
    #: the backend's URL as configured (it may hold credentials: shown through ``redact.host_of``)
    backend_host: str


class StatusState(Protocol):
    """The daemon as the status views see it (see the module docstring)."""

    @property
    def settings(self) -> Settings:
        """The current settings (a SIGHUP reload shows here)."""
        ...

    @property
    def jobs_done(self) -> int: ...

    def clock(self) -> float:
        """The daemon's monotonic clock (injected in tests)."""
        ...

    @property
    def disk(self) -> DiskWatch:
        """The stores that refuse writes now; the status files' own failures are reported here too."""
        ...

    def progress(self) -> JobProgress | None:
        """The running job now; None when idle."""
        ...

    async def ping_backend(self) -> None:
        """Returns when the backend answers; ``BatchdError`` when it does not."""
        ...
