"""The Ollama backend: ``POST /api/chat`` with a pinned context and no silent truncation.

httpx errors and HTTP statuses are translated by ``backends.http`` (shared with
the openai backend); callers see only ``batchd.errors`` classes.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from batchd.backends.base import (
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    Fingerprint,
    LoadedModel,
    fingerprint_id,
    finish_reason,
)
from batchd.backends.http import JsonHttp
from batchd.backends.messages import has_images, ollama_messages, ollama_tools, openai_calls
from batchd.backends.transport import make_client
from batchd.backends.vectors import pack_rows
from batchd.backends.wire import (
    OllamaChatResponse,
    OllamaGenerateResponse,
    OllamaPsResponse,
    OllamaShowResponse,
    OllamaTags,
    OllamaVersion,
)
from batchd.errors import Unsupported
from batchd.keepalive import encode_keep_alive
from batchd.redact import redact_url


class OllamaBackend:
    kind = "ollama"

    def __init__(
        self,
        *,
        url: str,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        keep_alive: str | float = "30m",
        max_connections: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
        send_shift_false: bool = True,
    ) -> None:
        self.host = url.rstrip("/")
        #: False: send no shift, so the server's default applies (backend.shift = "server")
        self.send_shift_false = send_shift_false
        self.keep_alive = encode_keep_alive(keep_alive)  # "-1" as a string is a 400 on every call
        self._client = make_client(
            self.host,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )
        self.host = redact_url(self.host)  # the client keeps the credentials; logs and errors never see them
        self._http = JsonHttp(self._client, self.host)
        #: each model's ``/api/show`` capabilities, asked the first time a request needs them
        self._capabilities: dict[str, tuple[str, ...]] = {}

    async def chat(self, request: ChatRequest) -> ChatResult:
        if request.prompt is not None:
            return await self._generate(request)
        tools = ollama_tools(request.tools, request.tool_choice)
        if has_images(request.messages):
            await self._check_vision(request.model)
        payload: dict[str, Any] = {"model": request.model, "messages": ollama_messages(request.messages)}
        payload |= self._generation(request)
        if tools is not None:
            payload["tools"] = tools
        started = time.perf_counter()
        reply = await self._http.post("/api/chat", payload, model=request.model, reply=OllamaChatResponse)
        calls = openai_calls(reply.message.tool_calls, request.custom_id)
        return ChatResult(
            content=reply.message.content,
            tool_calls=calls,
            finish_reason=finish_reason(reply.done_reason, tool_calls=bool(calls)),
            prompt_tokens=reply.prompt_eval_count or 0,
            completion_tokens=reply.eval_count or 0,
            model=reply.model or request.model,
            latency_s=time.perf_counter() - started,
            load_seconds=reply.load_duration / 1e9 if reply.load_duration is not None else None,
            cached_tokens=reply.prompt_eval_cached_count,
        )

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """``POST /api/embed`` with every input at once; ``truncate: false``: an input over the window is
        a 400 naming it, not a vector of its first part (``server/routes.go`` ``EmbedHandler``)."""
        payload: dict[str, Any] = {
            "model": request.model,
            "input": request.inputs,
            "truncate": False,
            "keep_alive": self.keep_alive,
        }
        if request.dimensions is not None:
            payload["dimensions"] = request.dimensions
        started = time.perf_counter()
        data = await self._http.post_raw("/api/embed", payload, model=request.model)
        count = data.get("prompt_eval_count")
        return EmbedResult(
            vectors=pack_rows(data.get("embeddings"), len(request.inputs)),
            prompt_tokens=count if isinstance(count, int) else 0,
            model=str(data.get("model") or request.model),
            latency_s=time.perf_counter() - started,
        )

    async def fingerprint(self, model: str) -> Fingerprint | None:
        """The model's digest and details from ``/api/tags`` (None when the server does not list it)."""
        tags = await self._http.get("/api/tags", OllamaTags)
        for tag in tags.models:
            if model in (tag.name, tag.model) or f"{model}:latest" in (tag.name, tag.model):
                keep = ("family", "parameter_size", "quantization_level")
                details = {k: str(tag.details[k]) for k in keep if tag.details.get(k)}
                return Fingerprint(
                    id="fp_" + tag.digest.removeprefix("sha256:")[:12] if tag.digest else fingerprint_id(details),
                    details={"host": self.host, "model": tag.name or model, "digest": tag.digest, **details},
                )
        return None

    async def _check_vision(self, model: str) -> None:
        """Images to a model without ``vision``: Ollama does not refuse them up front (its runner fails
        or ignores them), so the model's own capabilities (``/api/show``, asked once) decide here."""
        if model not in self._capabilities:
            self._capabilities[model] = tuple((await self.show(model)).capabilities)
        caps = self._capabilities[model]
        if caps and "vision" not in caps:
            raise Unsupported(f"model {model!r} has no vision: its capabilities are {', '.join(caps)}")

    def _generation(self, request: ChatRequest) -> dict[str, Any]:
        """What every generating call (``/api/chat``, ``/api/generate``) carries besides its input: the same
        runner options each time (a different ``num_ctx`` or ``shift`` reloads the model), no streaming."""
        fields: dict[str, Any] = {
            "stream": False,
            "options": {**request.options, "num_ctx": request.num_ctx},
            # Ollama silently cuts overflowing prompts and still answers 200; with
            # truncate off (>= 0.12.6), overflow is a 400 the context loop can act on.
            "truncate": False,
            "keep_alive": self.keep_alive,
            # Thinking models default think to true (server/routes.go ChatHandler) and spend
            # num_predict on thoughts; off unless the request or pipeline asks.
            "think": request.think if request.think is not None else False,
        }
        if self.send_shift_false:
            # An answer that fills the window stops (done_reason "length") instead of silently
            # dropping the oldest prompt tokens. >= 0.30: a client with another shift reloads the
            # model (server/sched.go needsReload), hence backend.shift = "server" for shared servers.
            fields["shift"] = False
        if request.format is not None:
            fields["format"] = request.format
        return fields

    async def _generate(self, request: ChatRequest) -> ChatResult:
        """A completion: ``POST /api/generate`` with the prompt, as Ollama's own ``/v1/completions`` does
        (``openai/openai.go`` ``FromCompleteRequest``: the model's template applies, no ``raw``)."""
        payload: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
        payload |= self._generation(request)
        started = time.perf_counter()
        reply = await self._http.post("/api/generate", payload, model=request.model, reply=OllamaGenerateResponse)
        return ChatResult(
            content=reply.response,
            finish_reason=finish_reason(reply.done_reason),
            prompt_tokens=reply.prompt_eval_count or 0,
            completion_tokens=reply.eval_count or 0,
            model=reply.model or request.model,
            latency_s=time.perf_counter() - started,
            load_seconds=reply.load_duration / 1e9 if reply.load_duration is not None else None,
        )

    async def ping(self) -> None:
        await self._http.get("/api/version", OllamaVersion)

    async def version(self) -> str:
        """The server's version string (``GET /api/version``), e.g. ``"0.33.0"``."""
        return (await self._http.get("/api/version", OllamaVersion)).version

    async def show(self, model: str) -> OllamaShowResponse:
        """``POST /api/show``: the model's metadata; raises ModelNotFound."""
        return await self._http.post("/api/show", {"model": model}, model=model, reply=OllamaShowResponse)

    async def context_length(self, model: str) -> int | None:
        return (await self.show(model)).context_length()

    async def ps(self) -> OllamaPsResponse:
        """``GET /api/ps``: the models in memory."""
        return await self._http.get("/api/ps", OllamaPsResponse)

    async def loaded(self) -> list[LoadedModel]:
        return [
            LoadedModel(name=m.label, size=m.size, size_vram=m.size_vram, context_length=m.context_length)
            for m in (await self.ps()).models
        ]

    async def aclose(self) -> None:
        await self._client.aclose()
