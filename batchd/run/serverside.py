"""The server a job runs on, as the runner sees it: its version, clean requests, reloads.

``start()`` (job start) reads Ollama's ``/api/version`` into ``metrics.json``
(``server.version``) and logs what that version lacks (``backends.ollama_facts``);
``strip()`` takes runner options out of each request line, since on a shared
server they reload the model (one ``runner_options_stripped`` line per job);
``on_reply()`` and ``poll()`` feed the ``ReloadWatch`` (``reloads``).
"""

from __future__ import annotations

from dataclasses import replace

import structlog

from batchd.backends.base import Backend, ChatRequest, ChatResult
from batchd.backends.ollama_facts import CACHE_ONLY_COUNTS, parse_version, strip_runner_options, version_notes
from batchd.errors import RequestError, TransientError
from batchd.metrics import JobMetrics
from batchd.run.fingerprints import FingerprintWatch
from batchd.run.reloads import ReloadWatch

log = structlog.get_logger("batchd.serverside")

#: how often /api/ps is read for a changed context_length (a reload by another client)
PS_SECONDS = 10.0


class ServerSide:
    def __init__(self, *, backend: Backend, metrics: JobMetrics, job_id: str, model: str, num_ctx: int) -> None:
        self.backend = backend
        self.metrics = metrics
        self.job_id = job_id
        self.num_ctx = num_ctx
        self.reloads = ReloadWatch(metrics=metrics, num_ctx=num_ctx, model=model)
        self.fingerprints = FingerprintWatch(backend=backend, metrics=metrics, job_id=job_id, model=model)
        #: the server is known to count only uncached prompt tokens (Ollama 0.30.0)
        self.counts_cache_only = False
        self._next_ps = 0.0

    async def start(self) -> None:
        """The model's fingerprint; Ollama: its version into metrics.json and what it lacks into the log."""
        await self.fingerprints.take()
        read = getattr(self.backend, "version", None)
        if read is None:
            return
        try:
            version = self.metrics.server_version = await read()
        except (TransientError, RequestError):
            return
        for level, note in version_notes(version):
            getattr(log, level)("server_version", job_id=self.job_id, version=version, note=note)
        # known for this release: not to be proven call by call
        self.counts_cache_only = parse_version(version) == CACHE_ONLY_COUNTS

    def strip(self, chat: ChatRequest) -> ChatRequest:
        """``chat`` without runner options; the first time a job has any, one log line names them."""
        options, dropped = strip_runner_options(chat.options)
        if not dropped:
            return chat
        seen = self.metrics.runner_options_stripped
        if not seen:
            log.warning(
                "runner_options_stripped",
                job_id=self.job_id,
                options=dropped,
                num_ctx=self.num_ctx,
                hint="runner options reload the model on the server; set them there, not per request",
            )
        if set(dropped) - set(seen):
            self.metrics.runner_options_stripped = sorted({*seen, *dropped})
        return replace(chat, options=options)

    def on_reply(self, result: ChatResult, now: float) -> None:
        if self.reloads.on_reply(result.load_seconds, now):
            self.fingerprints.stale = True  # a reload may have brought another file: look again

    async def poll(self, now: float) -> None:
        """Read ``/api/ps`` every ``PS_SECONDS`` (Ollama only; cheap, and it never fails the job)."""
        if self.fingerprints.stale:
            await self.fingerprints.take()
        if self.backend.kind != "ollama" or now < self._next_ps:
            return
        self._next_ps = now + PS_SECONDS
        try:
            if self.reloads.on_ps(await self.backend.loaded()):
                self.fingerprints.stale = True
        except TransientError:
            pass
