"""The Ollama backend: ``POST /api/chat`` with a pinned context and no silent truncation.

httpx errors and HTTP statuses are translated by ``backends.http`` (shared with
the openai backend); callers see only ``batchd.errors`` classes.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from batchd.backends.base import ChatRequest, ChatResult, LoadedModel, finish_reason
from batchd.backends.http import JsonHttp
from batchd.backends.ollama_facts import encode_keep_alive
from batchd.backends.transport import make_client
from batchd.errors import BackendServerError
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

    async def chat(self, request: ChatRequest) -> ChatResult:
        payload: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
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
            payload["shift"] = False
        if request.format is not None:
            payload["format"] = request.format
        started = time.perf_counter()
        data = await self._http.post("/api/chat", payload, model=request.model)
        message = data.get("message") or {}
        content = message.get("content")
        if not isinstance(content, str):
            raise BackendServerError("reply has no message.content", status_code=502)
        return ChatResult(
            content=content,
            finish_reason=finish_reason(data.get("done_reason")),
            prompt_tokens=int(data.get("prompt_eval_count") or 0),
            completion_tokens=int(data.get("eval_count") or 0),
            model=str(data.get("model") or request.model),
            latency_s=time.perf_counter() - started,
            load_seconds=data["load_duration"] / 1e9 if isinstance(data.get("load_duration"), int) else None,
        )

    async def ping(self) -> None:
        await self._http.get("/api/version")

    async def version(self) -> str | None:
        """The server's version string (``GET /api/version``), e.g. ``"0.33.0"``."""
        data = await self._http.get("/api/version")
        return str(data["version"]) if isinstance(data.get("version"), str) else None

    async def context_length(self, model: str) -> int | None:
        data = await self._http.post("/api/show", {"model": model}, model=model)
        info = data.get("model_info") or {}
        for key, value in info.items():
            if key.endswith(".context_length") and isinstance(value, int):
                return value
        return None

    async def loaded(self) -> list[LoadedModel]:
        data = await self._http.get("/api/ps")
        out = []
        for m in data.get("models") or []:
            out.append(
                LoadedModel(
                    name=str(m.get("name") or m.get("model") or ""),
                    size=int(m.get("size") or 0),
                    size_vram=int(m.get("size_vram") or 0),
                    context_length=m.get("context_length"),
                )
            )
        return out

    async def aclose(self) -> None:
        await self._client.aclose()
