"""What ``status/`` sees of the daemon: the ``status.state.StatusState`` the daemon hands the live
views, built from getters (settings, jobs done, clock, the running job, the stores that refuse writes,
the backend), never the daemon or its runner. It frees ``daemon.py`` of the runner-to-view mapping."""

from __future__ import annotations

from collections.abc import Callable

from batchd.backends.base import Backend
from batchd.config import Settings
from batchd.run.runner import JobRunner
from batchd.status.state import JobProgress
from batchd.storage import DiskWatch


class StatusWindow:
    """See the module docstring; each property reads the daemon's state now (a SIGHUP shows here)."""

    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        jobs_done: Callable[[], int],
        clock: Callable[[], float],
        current: Callable[[], JobRunner | None],
        disk: DiskWatch,
        backend: Callable[[], Backend],
    ) -> None:
        self._settings = settings
        self._jobs_done = jobs_done
        self.clock = clock
        self._current = current
        self._disk = disk
        self._backend = backend

    @property
    def settings(self) -> Settings:
        return self._settings()

    @property
    def jobs_done(self) -> int:
        return self._jobs_done()

    @property
    def disk(self) -> DiskWatch:
        return self._disk

    def progress(self) -> JobProgress | None:
        runner = self._current()
        if runner is None:
            return None
        gate = runner.gate
        return JobProgress(
            job_id=runner.job.id,
            metrics=runner.metrics,
            lanes=runner.lanes,
            lanes_active=runner.active_lanes,
            in_flight=runner.in_flight,
            cancelled=runner.cancelled,
            down_since=gate.down_since,
            backend_up=gate.is_open,
            backend_host=runner.backend.host,
        )

    async def ping_backend(self) -> None:
        await self._backend().ping()
