"""One request to its outcome: the calls, the retries (backoff with jitter, context overflow, OOM, a
truncated or invalid reply), the outage gate on the way, and the ``Outcome`` the journal records.

``JobRunner`` owns one ``Attempts``, built from the collaborators it names (no back-reference to the runner).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
import structlog

from batchd.aio import Sleep
from batchd.backends.base import Backend, ChatResult
from batchd.config import Settings
from batchd.errors import (
    BackendBusy,
    BackendOutOfMemory,
    BackendUnavailable,
    ContextLengthExceeded,
    InvalidReply,
    JobError,
    RequestError,
    TransientError,
)
from batchd.intake.endpoints import Endpoint, endpoint_of
from batchd.intake.ingest import full_body
from batchd.journal import Job, Outcome, ReqState, Request
from batchd.metrics import JobMetrics
from batchd.run.context import Conversation, Truncation
from batchd.run.embeds import EmbedAttempts, Packer
from batchd.run.lanes import LaneController
from batchd.run.outage import Gate
from batchd.run.replies import ReplyChecker, checker_for
from batchd.run.results import response_body, text_completion_body
from batchd.run.serverside import ServerSide
from batchd.run.translate import responses_as_chat, result_id, to_chat_request

log = structlog.get_logger("batchd.attempts")


@dataclass(frozen=True)
class Backoff:
    """The wait before a transient failure's next attempt: doubling with jitter, capped; Retry-After honoured."""

    base: float
    cap: float
    rng: random.Random

    def delay(self, attempts: int, exc: TransientError) -> float:
        delay = min(self.cap, self.base * 2.0 ** (attempts - 1)) * (0.5 + self.rng.random())
        if isinstance(exc, BackendBusy) and exc.retry_after is not None:
            delay = max(delay, min(self.cap, exc.retry_after))
        return delay


class Attempts:
    """``execute``: one request, attempt after attempt, until it is done, failed, or the job halts.

    Built once per run by the ``JobRunner`` from the collaborators below; what the runner learns
    after that (the server's facts, once the context is pinned) it hands over with ``server``.
    ``wait_gate`` waits for the backend and says whether the job must not go on; ``on_fatal``
    ends the whole job (both the runner's: they know about stop and cancel).
    """

    def __init__(
        self,
        *,
        job: Job,
        backend: Backend,
        metrics: JobMetrics,
        control: LaneController,
        gate: Gate,
        replies: ReplyChecker,
        backoff: Backoff,
        prefix: dict[str, Any] | None,
        model: str,
        num_predict: int,
        max_attempts: int,
        lanes: int,
        conversation_asked: bool,
        wait_gate: Callable[[], Awaitable[bool]],
        on_fatal: Callable[[JobError], None],
        sleep: Sleep,
        clock: Callable[[], float],
    ) -> None:
        self.job = job
        self.backend = backend
        self.metrics = metrics
        self.control = control
        self.auto = not control.fixed
        self.gate = gate
        self.replies = replies
        self.backoff = backoff
        self.prefix = prefix
        self.model = model
        self.num_predict = num_predict
        self.max_attempts = max_attempts
        #: the job's lane count, which conversation mode's paying check weighs
        self.lanes = lanes
        #: the pipeline (or the configuration) named conversation mode: no conversation_not_paying
        self.conversation_asked = conversation_asked
        self.wait_gate = wait_gate
        self.on_fatal = on_fatal
        self.sleep = sleep
        self.clock = clock
        #: the server's version, request hygiene and reloads (the runner sets it once the context is pinned)
        self.server: ServerSide | None = None
        #: embedding lines: packed into shared calls, no conversation
        self.embeds = EmbedAttempts(
            packer=Packer(backend),
            metrics=metrics,
            gate=gate,
            prefix=prefix,
            model=model,
            max_attempts=max_attempts,
            delay=backoff.delay,
            wait_gate=wait_gate,
            on_fatal=on_fatal,
            failure=self._failure,
            fingerprint=self.fingerprint,
            sleep=sleep,
        )

    @classmethod
    def for_job(
        cls,
        settings: Settings,
        job: Job,
        *,
        backend: Backend,
        metrics: JobMetrics,
        control: LaneController,
        gate: Gate,
        lanes: int,
        rng: random.Random,
        wait_gate: Callable[[], Awaitable[bool]],
        on_fatal: Callable[[JobError], None],
        sleep: Sleep,
        clock: Callable[[], float],
    ) -> Attempts:
        """The job's rules read from the settings and the job; the collaborators as the runner made them."""
        prefix: dict[str, Any] | None = orjson.loads(job.prefix_json) if job.prefix_json else None
        return cls(
            job=job,
            backend=backend,
            metrics=metrics,
            control=control,
            gate=gate,
            replies=checker_for(prefix, job.pipeline_json),  # schema checks for pipeline jobs
            backoff=Backoff(base=settings.backend.backoff_seconds, cap=settings.backend.backoff_max_seconds, rng=rng),
            prefix=prefix,
            model=job.model or settings.backend.model,
            num_predict=settings.context.num_predict,
            max_attempts=settings.backend.max_attempts,
            lanes=lanes,
            conversation_asked=(
                "mode" in settings.context.model_fields_set
                or orjson.loads(job.pipeline_json or "{}").get("mode") == "conversation"
            ),
            wait_gate=wait_gate,
            on_fatal=on_fatal,
            sleep=sleep,
            clock=clock,
        )

    async def execute(self, req: Request, conv: Conversation, lane: int = 0) -> Outcome | None:
        endpoint = endpoint_of(req.url)
        if endpoint is Endpoint.EMBEDDINGS:
            return await self.embeds.execute(req)
        body = full_body(self.prefix, req.body or {})
        if endpoint is Endpoint.RESPONSES:
            body = responses_as_chat(body)
        elif endpoint is Endpoint.COMPLETIONS:  # a prompt continues no conversation
            conv = Conversation(
                settings=conv.settings,
                num_ctx=conv.num_ctx,
                metrics=conv.metrics,
                mode="isolated",
                budget=conv.budget,
                lane=conv.lane,
            )
        chat = to_chat_request(
            body,
            model=self.model,
            num_ctx=conv.num_ctx,
            custom_id=req.custom_id or "",
        )
        if self.server is not None:
            chat = self.server.strip(chat)
        num_predict = int(chat.options.get("num_predict") or self.num_predict)
        # The job's shared prefix (CSV pipelines) is known; a JSONL line's is its leading turns.
        prefix_len = len(self.prefix.get("messages") or []) if self.prefix else None
        asked = chat.messages
        attempts = 0
        reply_tries = 0
        max_attempts = self.max_attempts
        while True:
            try:
                messages = conv.build(chat.messages, num_predict, prefix_len=prefix_len, model=chat.model)
            except ContextLengthExceeded as exc:
                return self._failure(req, attempts, exc)
            attempts += 1
            self.metrics.requests_sent += 1
            try:
                # affinity: with several hosts a lane's conversation stays where its prefix cache lives
                call = self.backend.chat(replace(chat, messages=messages, affinity=lane))
                result = await (self.control.measure(call) if self.auto else call)
            except BackendUnavailable as exc:
                attempts -= 1  # an outage pauses the job; it is not this request's fault
                self.gate.close(str(exc))
                if await self.wait_gate():
                    return None
                continue
            except ContextLengthExceeded as exc:
                self.metrics.retries["context_overflow"] += 1
                if conv.on_overflow(n_ctx=exc.n_ctx, n_prompt_tokens=exc.n_prompt_tokens) and attempts < max_attempts:
                    continue
                return self._failure(req, attempts, exc)
            except TransientError as exc:
                self.metrics.retries[exc.cause] += 1
                if isinstance(exc, BackendOutOfMemory):
                    self.metrics.oom_events += 1
                    conv.on_oom()
                if attempts >= max_attempts:
                    return self._failure(req, attempts, exc)
                delay = self.backoff.delay(attempts, exc)
                log.info(
                    "request_retrying",
                    job_id=self.job.id,
                    custom_id=req.custom_id,
                    code=exc.code,
                    attempt=attempts,
                    max_attempts=max_attempts,
                    delay_seconds=round(delay, 2),
                )
                await self.sleep(delay)
                continue
            except JobError as exc:
                self.on_fatal(exc)
                return None
            except RequestError as exc:
                return self._failure(req, attempts, exc)
            verdict = conv.truncation(result)
            if verdict is not None:
                self.metrics.truncations_detected += 1
                self.metrics.retries[verdict.value] += 1
                log.warning(
                    "context_truncated",
                    job_id=self.job.id,
                    custom_id=req.custom_id,
                    reason=verdict.value,
                    prompt_tokens=result.prompt_tokens,
                )
                cut_at = result.prompt_tokens if verdict is Truncation.PROMPT_TRUNCATED else None
                if attempts < max_attempts and conv.on_overflow(cut_at):
                    continue
                if verdict is Truncation.PROMPT_TRUNCATED:
                    return self._failure(
                        req,
                        attempts,
                        ContextLengthExceeded("the server cut the prompt to fit its context window", status_code=None),
                    )
                # Cut at the window with nothing left to trim: the reply stands, marked "length".
            if self.server is not None:
                self.server.on_reply(result, self.clock())
            self.metrics.add_reply(
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                latency=result.latency_s,
                cached=result.cached_tokens,
            )
            problem = None if result.tool_calls else self.replies.problem(result.content)
            if problem is not None:
                if reply_tries < self.replies.retries:
                    reply_tries += 1
                    self.metrics.retries["invalid_reply"] += 1
                    chat = replace(
                        chat,
                        messages=[
                            *chat.messages,
                            {"role": "assistant", "content": result.content},
                            {"role": "user", "content": self.replies.correction(problem)},
                        ],
                    )
                    continue
                return self._failure(req, attempts, InvalidReply(problem, raw=result.content))
            conv.record(asked, result, prefix_len=prefix_len)
            if conv.mode == "conversation" and not self.conversation_asked:
                conv.budget.check_paying(lanes=self.lanes)
            return self._success(req, attempts, result, endpoint)

    def fingerprint(self) -> str | None:
        """The answering model's ``system_fingerprint`` (``run.fingerprints``), once the server is known."""
        return self.server.fingerprints.id if self.server is not None else None

    def _success(self, req: Request, attempts: int, result: ChatResult, endpoint: Endpoint) -> Outcome:
        if self.metrics.served_model is None:
            self.metrics.served_model = result.model
        if endpoint is Endpoint.RESPONSES:
            body = response_body(result, ident=result_id(self.job.sha256, req.custom_id, "resp"))
        elif endpoint is Endpoint.COMPLETIONS:
            body = text_completion_body(result, ident=result_id(self.job.sha256, req.custom_id, "cmpl"))
        else:
            body = result.completion_body()
            body["id"] = result_id(self.job.sha256, req.custom_id, "chatcmpl")
        body["system_fingerprint"] = self.fingerprint()
        return Outcome(
            seq=req.seq,
            state=ReqState.DONE,
            attempts=attempts,
            result=body,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )

    def _failure(self, req: Request, attempts: int, exc: RequestError | TransientError) -> Outcome:
        error: dict[str, Any] = {"code": exc.code, "message": exc.message}
        status = getattr(exc, "status_code", None)
        if status is not None:
            error["status_code"] = status
        if isinstance(exc, InvalidReply):
            error["raw"] = exc.raw
        log.warning(
            "request_failed",
            job_id=self.job.id,
            custom_id=req.custom_id,
            code=exc.code,
            error=exc.message,
            attempts=attempts,
        )
        return Outcome(seq=req.seq, state=ReqState.FAILED, attempts=attempts, error=error)
