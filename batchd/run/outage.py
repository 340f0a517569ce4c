"""The outage gate: while the backend is down every lane waits on one ``Gate`` and one prober, no
request's attempts are spent, and the outage's length goes into the job's metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from batchd.aio import Sleep
from batchd.backends.base import Backend
from batchd.errors import BatchdError, JobError, TransientError
from batchd.metrics import JobMetrics

log = structlog.get_logger("batchd.outage")


class Gate:
    """Open while the backend answers; closed during an outage, with one prober.

    The prober never dies: a transient answer (refused, timeout, 5xx, 503) keeps it probing
    with backoff; an answer that says the job cannot run (``JobError``: model gone, credentials
    refused) ends the wait through ``on_fatal``; any other answer means the server is up.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        sleep: Sleep,
        clock: Callable[[], float],
        metrics: JobMetrics,
        max_wait: float = 30.0,
        on_fatal: Callable[[JobError], None] | None = None,
    ) -> None:
        self.backend = backend
        self.sleep = sleep
        self.clock = clock
        self.metrics = metrics
        self.max_wait = max_wait
        self.on_fatal = on_fatal
        self._open = asyncio.Event()
        self._open.set()
        self._prober: asyncio.Task[None] | None = None
        self.down_since: float | None = None
        #: wall-clock time of the outage's start (the status line shows it)
        self.down_since_wall: float | None = None
        self.probes = 0
        self.reason = ""

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def close(self, reason: str) -> None:
        if not self._open.is_set():
            return
        self._open.clear()
        self.down_since = self.clock()
        self.down_since_wall = time.time()
        self.probes = 0
        self.reason = reason
        self.metrics.outages += 1
        log.warning("backend_down", host=self.backend.host, reason=reason)
        self._prober = asyncio.create_task(self._probe())

    async def wait(self) -> None:
        await self._open.wait()

    async def _probe(self) -> None:
        delay = 0.5
        while True:
            await self.sleep(delay)
            self.probes += 1
            try:
                await self.backend.ping()
            except TransientError as exc:
                self.reason = str(exc)
                delay = min(self.max_wait, delay * 2)
                continue
            except JobError as exc:
                log.error("backend_refused", host=self.backend.host, code=exc.code, error=exc.message)
                if self.on_fatal is not None:
                    self.on_fatal(exc)
            except BatchdError as exc:  # it answered (a 400 to the probe): it is up; calls will tell more
                log.warning("backend_probe_answer", host=self.backend.host, code=exc.code, error=exc.message)
            except Exception as exc:  # noqa: BLE001 - a bug here must not leave the gate closed for ever
                log.error("backend_probe_failed", host=self.backend.host, error=repr(exc))
                delay = min(self.max_wait, delay * 2)
                continue
            break
        down = self.clock() - (self.down_since or self.clock())
        self.metrics.outage_seconds += down
        log.info("backend_up", host=self.backend.host, down_seconds=round(down, 1))
        self.down_since = self.down_since_wall = None
        self._open.set()

    def cancel(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
