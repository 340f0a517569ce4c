"""Which model answers a job: its fingerprint at the start and again after every detected reload.

A model re-pulled under the same tag, or another quantisation on a second host, answers under the
same name; only its fingerprint (``Backend.fingerprint``: Ollama's digest and details, an
OpenAI-compatible server's ``/v1/models`` entry, the embedded GGUF's sha256) tells. It goes into
``metrics.json`` (``server.fingerprint``, per host for a pool) and onto every result body as
``system_fingerprint``; one that differs from the last logs ``model_changed`` and is kept in
``server.model_changes``. A backend that cannot tell (or a failed read) leaves the last one standing.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import structlog

from batchd.backends.base import Backend, Fingerprint
from batchd.errors import BatchdError
from batchd.metrics import JobMetrics

log = structlog.get_logger("batchd.runner")


class FingerprintWatch:
    def __init__(self, *, backend: Backend, metrics: JobMetrics, job_id: str, model: str) -> None:
        self.backend = backend
        self.metrics = metrics
        self.job_id = job_id
        self.model = model
        self.current: Fingerprint | None = None
        #: set when a reload was seen: the next poll reads the fingerprint again
        self.stale = True

    @property
    def id(self) -> str | None:
        return self.current.id if self.current is not None else None

    async def take(self) -> None:
        """Read the fingerprint now; a change from the last one is ``model_changed``."""
        self.stale = False
        read = getattr(self.backend, "fingerprint", None)
        if read is None:
            return
        try:
            fp: Fingerprint | None = await read(self.model)
        except BatchdError:
            return  # the server is busy or away: the reload watch or the gate will bring us back
        if fp is None:
            return
        before, self.current = self.current, fp
        self.metrics.fingerprint = asdict(fp)
        if before is not None and before.id != fp.id:
            change = {"at": round(time.time(), 3), "from": before.id, "to": fp.id}
            self.metrics.model_changes = [*self.metrics.model_changes, change]
            log.warning(
                "model_changed",
                job_id=self.job_id,
                model=self.model,
                was=before.id,
                now=fp.id,
                details=fp.details,
                hint="the server answers with another model file under the same name (re-pulled, or another host)",
            )
