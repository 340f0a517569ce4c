"""Several hosts of one kind behind one ``Backend``: spread, stick, fail over, probe back.

Requests go to the healthy host with the fewest calls in flight, except that a
request with an ``affinity`` (the runner's lane index) stays on host
``affinity % n`` while that host is healthy: the conversation's prefix cache
lives there. A host that refuses connections, or fails ``FAIL_THRESHOLD`` calls
in a row with 5xx or timeouts, is taken out; it is probed back in with
``ping()`` once its backoff has passed (no background loop: the probe is
started by the next call that notices it is due). Only when every host is out
does ``chat`` raise ``BackendUnavailable``, so the runner pauses the job and
probes ``ping()``, which answers as soon as any host is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from batchd.backends.base import (
    Backend,
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    Fingerprint,
    LoadedModel,
    fingerprint_id,
)
from batchd.errors import (
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    BatchdError,
    TransientError,
)

log = structlog.get_logger("batchd.backends.multi")

#: consecutive 5xx / timeouts that take a host out
FAIL_THRESHOLD = 3


@dataclass
class _Host:
    backend: Backend
    down: bool = False
    failures: int = 0
    inflight: int = 0
    retry_at: float = 0.0
    backoff: float = 0.0
    probe: asyncio.Task[None] | None = None


class MultiBackend:
    """One ``Backend`` over several hosts of the same kind."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        clock: Callable[[], float] = time.monotonic,
        probe_seconds: float = 0.5,
        probe_max_seconds: float = 30.0,
    ) -> None:
        if not backends:
            raise ValueError("MultiBackend needs at least one host")
        self.hosts = [_Host(b) for b in backends]
        self.kind = backends[0].kind
        self.host = ",".join(b.host for b in backends)
        self._clock = clock
        self._probe_seconds = probe_seconds
        self._probe_max = probe_max_seconds
        self._turn = 0

    # -- Backend Protocol ------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResult:
        while True:
            host = self._pick(request.affinity)
            if host is None:
                raise BackendUnavailable(f"all {len(self.hosts)} hosts are down: {self.host}")
            host.inflight += 1
            try:
                result = await host.backend.chat(request)
            except BackendUnavailable as exc:
                self._take_out(host, str(exc))
                continue  # the request was never served: try the next healthy host at once
            except (BackendTimeout, BackendServerError) as exc:
                host.failures += 1
                if host.failures >= FAIL_THRESHOLD:
                    self._take_out(host, f"{host.failures} failures in a row: {exc.message}")
                raise  # the runner counts the attempt and retries, on another host if this one is out
            finally:
                host.inflight -= 1
            host.failures = 0
            return result

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """Any healthy host (embeddings keep no prefix cache worth following)."""
        while True:
            host = self._pick(None)
            if host is None:
                raise BackendUnavailable(f"all {len(self.hosts)} hosts are down: {self.host}")
            host.inflight += 1
            try:
                return await host.backend.embed(request)
            except BackendUnavailable as exc:
                self._take_out(host, str(exc))
            finally:
                host.inflight -= 1

    async def fingerprint(self, model: str) -> Fingerprint | None:
        """Each healthy host's, under ``hosts``; one id when they all agree, else one of all of them."""
        prints: dict[str, Fingerprint] = {}
        for backend in self.healthy():
            read = getattr(backend, "fingerprint", None)
            fp = await read(model) if read is not None else None
            if fp is not None:
                prints[backend.host] = fp
        if not prints:
            return None
        ids = sorted({fp.id for fp in prints.values()})
        hosts = {host: {"id": fp.id, **fp.details} for host, fp in prints.items()}
        return Fingerprint(id=ids[0] if len(ids) == 1 else fingerprint_id(*ids), details={"hosts": hosts})

    async def ping(self) -> None:
        """Fine when any host answers; hosts that answer come back in at once."""
        if any(not h.down for h in self.hosts):
            return
        await asyncio.gather(*(self._probe(h) for h in self.hosts), return_exceptions=True)
        if all(h.down for h in self.hosts):
            raise BackendUnavailable(f"all {len(self.hosts)} hosts are down: {self.host}")

    async def context_length(self, model: str) -> int | None:
        """The smallest window among the hosts that answer: one num_ctx must fit them all."""
        windows: list[int] = []
        answered = False
        for host in self.hosts:
            if host.down:
                continue
            try:
                value = await host.backend.context_length(model)
            except BackendUnavailable as exc:
                self._take_out(host, str(exc))
                continue
            answered = True
            if value:
                windows.append(value)
        if not answered:
            raise BackendUnavailable(f"all {len(self.hosts)} hosts are down: {self.host}")
        return min(windows) if windows else None

    async def loaded(self) -> list[LoadedModel]:
        out: list[LoadedModel] = []
        for host in self.hosts:
            if host.down:
                continue
            try:
                out.extend(await host.backend.loaded())
            except TransientError:
                continue
        return out

    async def aclose(self) -> None:
        for host in self.hosts:
            if host.probe is not None:
                host.probe.cancel()
        for host in self.hosts:
            await host.backend.aclose()

    # -- dispatch and health -----------------------------------------------------------------

    def healthy(self) -> list[Backend]:
        return [h.backend for h in self.hosts if not h.down]

    def _pick(self, affinity: int | None) -> _Host | None:
        self._probe_due()
        up = [h for h in self.hosts if not h.down]
        if not up:
            return None
        if affinity is not None:
            home = self.hosts[affinity % len(self.hosts)]
            # While home is out, the lane still lands on one fallback host, not a different one each call.
            return home if not home.down else up[affinity % len(up)]
        self._turn += 1
        start = self._turn % len(up)
        ring = up[start:] + up[:start]  # rotate so ties do not always go to the first host
        return min(ring, key=lambda h: h.inflight)

    def _take_out(self, host: _Host, reason: str) -> None:
        if host.down:
            return
        host.down = True
        host.failures = 0
        host.backoff = self._probe_seconds
        host.retry_at = self._clock() + host.backoff
        log.warning("host_down", host=host.backend.host, reason=reason, healthy=sum(not h.down for h in self.hosts))

    def _probe_due(self) -> None:
        now = self._clock()
        for host in self.hosts:
            if host.down and host.retry_at <= now and (host.probe is None or host.probe.done()):
                host.probe = asyncio.get_running_loop().create_task(self._probe(host))

    async def _probe(self, host: _Host) -> None:
        if not host.down:
            return
        try:
            await host.backend.ping()
        except TransientError:
            host.backoff = min(self._probe_max, max(host.backoff, self._probe_seconds) * 2)
            host.retry_at = self._clock() + host.backoff
            return
        except BatchdError:
            pass  # it answered, just not the way ping likes: it is up
        host.down = False
        host.failures = 0
        log.info("host_up", host=host.backend.host, healthy=sum(not h.down for h in self.hosts))
