"""Embedding lines to outcomes: the lines the lanes hand in at one moment go to the server as one call.

``Packer`` is the rule: every line submitted before the event loop next turns joins one
``Backend.embed`` call per model and ``dimensions`` (at most ``max_inputs`` inputs in a call;
more make more calls), and the vectors are split back in order. N lanes thus make calls of
up to N lines: 170,000 rows at 64 lanes are ~2,700 calls, not 170,000. A call the server
refuses (a 400: one input over the window) is tried again line by line, so one bad input
fails only its own line. Transient errors reach every line of the call, and each line's
``EmbedAttempts`` retries as a chat line would (backoff, the outage gate, ``max_attempts``).

Embedding lines are isolated by nature: no conversation, no context loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from batchd.aio import Sleep
from batchd.backends.base import Backend, EmbedRequest
from batchd.errors import BackendUnavailable, JobError, RequestError, TransientError
from batchd.intake.endpoints import embedding_inputs
from batchd.intake.ingest import full_body
from batchd.journal import Outcome, ReqState, Request
from batchd.metrics import JobMetrics
from batchd.run.lanes import LaneController
from batchd.run.outage import Gate

log = structlog.get_logger("batchd.attempts")

#: inputs in one call at most (OpenAI's own limit per request is 2,048; Ollama takes any number)
MAX_PACK_INPUTS = 256


@dataclass
class _Waiting:
    model: str
    dimensions: int | None
    inputs: list[str]
    future: asyncio.Future[tuple[list[bytes], int]] = field(repr=False)


class Packer:
    """``embed``: one line's inputs in, its vectors out; lines submitted together share a call."""

    def __init__(self, backend: Backend, *, max_inputs: int = MAX_PACK_INPUTS) -> None:
        self.backend = backend
        self.max_inputs = max_inputs
        #: calls made, and lines they carried (``calls / lines`` is the packing metrics.json shows)
        self.calls = 0
        self._waiting: list[_Waiting] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def embed(self, model: str, inputs: list[str], dimensions: int | None) -> tuple[list[bytes], int]:
        """The line's vectors (packed float32) and its share of the call's prompt tokens."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(model, dimensions, inputs, loop.create_future())
        self._waiting.append(waiting)
        if not self._scheduled:
            # After the callbacks ready now: the other lanes woken by the last reply submit first.
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await waiting.future

    def _dispatch(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        groups: dict[tuple[str, int | None], list[_Waiting]] = {}
        for w in waiting:
            if not w.future.done():  # a lane cancelled while it waited
                groups.setdefault((w.model, w.dimensions), []).append(w)
        for group in groups.values():
            chunk: list[_Waiting] = []
            size = 0
            for w in group:
                if chunk and size + len(w.inputs) > self.max_inputs:
                    self._spawn(chunk)
                    chunk, size = [], 0
                chunk.append(w)
                size += len(w.inputs)
            self._spawn(chunk)

    def _spawn(self, chunk: list[_Waiting]) -> None:
        task = asyncio.get_running_loop().create_task(self._call(chunk))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, chunk: list[_Waiting]) -> None:
        first = chunk[0]
        request = EmbedRequest(
            model=first.model, inputs=[t for w in chunk for t in w.inputs], dimensions=first.dimensions
        )
        self.calls += 1
        try:
            result = await self.backend.embed(request)
        except RequestError as exc:
            if len(chunk) > 1:  # one refused input must not fail the lines packed beside it
                for w in chunk:
                    self._spawn([w])
                return
            _settle(first, exc)
            return
        except Exception as exc:  # transient, job-ending: every line hears it and decides
            for w in chunk:
                _settle(w, exc)
            return
        chars = sum(len(t) for t in request.inputs) or 1
        at = 0
        for w in chunk:
            n = len(w.inputs)
            share = round(result.prompt_tokens * sum(len(t) for t in w.inputs) / chars)
            if not w.future.done():
                w.future.set_result((result.vectors[at : at + n], share))
            at += n

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _settle(w: _Waiting, exc: BaseException) -> None:
    if not w.future.done():
        w.future.set_exception(exc)


class EmbedAttempts:
    """One embedding line to its outcome, attempt after attempt, through the job's ``Packer``."""

    def __init__(
        self,
        *,
        packer: Packer,
        metrics: JobMetrics,
        gate: Gate,
        prefix: dict[str, Any] | None,
        model: str,
        max_attempts: int,
        delay: Callable[[int, TransientError], float],
        wait_gate: Callable[[], Awaitable[bool]],
        on_fatal: Callable[[JobError], None],
        failure: Callable[[Request, int, RequestError | TransientError], Outcome],
        fingerprint: Callable[[], str | None],
        sleep: Sleep,
    ) -> None:
        self.packer = packer
        self.metrics = metrics
        self.gate = gate
        self.prefix = prefix
        self.model = model
        self.max_attempts = max_attempts
        self.delay = delay
        self.wait_gate = wait_gate
        self.on_fatal = on_fatal
        self.failure = failure
        self.fingerprint = fingerprint
        self.sleep = sleep
        #: the embedding lanes' controller (``embedlanes``, when "auto"): each line, submit to vectors, is a sample
        self.control: LaneController | None = None

    async def execute(self, req: Request) -> Outcome | None:
        body = full_body(self.prefix, req.body or {})
        inputs = embedding_inputs(body)
        model = body.get("model") or self.model
        attempts = 0
        while True:
            attempts += 1
            self.metrics.requests_sent += 1
            started = time.perf_counter()
            try:
                call = self.packer.embed(model, inputs, body.get("dimensions"))
                vectors, tokens = await (self.control.measure(call) if self.control is not None else call)
            except BackendUnavailable as exc:
                attempts -= 1  # an outage pauses the job; it is not this line's fault
                self.gate.close(str(exc))
                if await self.wait_gate():
                    return None
                continue
            except TransientError as exc:
                self.metrics.retries[exc.cause] += 1
                if attempts >= self.max_attempts:
                    return self.failure(req, attempts, exc)
                await self.sleep(self.delay(attempts, exc))
                continue
            except JobError as exc:
                self.on_fatal(exc)
                return None
            except RequestError as exc:
                return self.failure(req, attempts, exc)
            self.metrics.add_reply(prompt_tokens=tokens, completion_tokens=0, latency=time.perf_counter() - started)
            if self.metrics.served_model is None:
                self.metrics.served_model = model
            return Outcome(
                seq=req.seq,
                state=ReqState.DONE,
                attempts=attempts,
                result={**embedding_body(model, len(vectors), tokens), "system_fingerprint": self.fingerprint()},
                prompt_tokens=tokens,
                completion_tokens=0,
                vector=b"".join(vectors),
            )


def embedding_body(model: str, count: int, tokens: int) -> dict[str, Any]:
    """A ``CreateEmbeddingResponse`` without its vectors: the journal keeps those packed, the outbox
    puts them back (``embedding`` as floats or base64, as the line asked)."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": []} for i in range(count)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
