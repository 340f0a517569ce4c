"""The Ollama backend: ``POST /api/chat`` with a pinned context and no silent truncation.

Every httpx error is translated here, in ``_translate``; callers see only
``batchd.errors`` classes.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson

from batchd.backends.base import ChatRequest, ChatResult, LoadedModel, finish_reason
from batchd.errors import (
    BackendBusy,
    BackendOutOfMemory,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    BadRequest,
    ContextLengthExceeded,
    ModelNotFound,
    TransientError,
)

_OOM_HINTS = ("out of memory", "runner process has terminated", "cudamalloc", "oom", "unable to allocate")
_OVERFLOW_HINTS = ("context length", "context window", "exceeds", "too long", "num_ctx")


class OllamaBackend:
    kind = "ollama"

    def __init__(
        self,
        *,
        url: str,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        keep_alive: str = "30m",
        max_connections: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.host = url.rstrip("/")
        self.keep_alive = keep_alive
        self._client = httpx.AsyncClient(
            base_url=self.host,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )

    async def chat(self, request: ChatRequest) -> ChatResult:
        payload: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "stream": False,
            "options": {**request.options, "num_ctx": request.num_ctx},
            # Ollama silently cuts overflowing prompts and still answers 200; with
            # both off, overflow is a 400 the context loop can act on.
            "truncate": False,
            "shift": False,
            "keep_alive": self.keep_alive,
        }
        if request.format is not None:
            payload["format"] = request.format
        started = time.perf_counter()
        data = await self._post("/api/chat", payload, model=request.model)
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
        )

    async def ping(self) -> None:
        await self._get("/api/version")

    async def context_length(self, model: str) -> int | None:
        data = await self._post("/api/show", {"model": model}, model=model)
        info = data.get("model_info") or {}
        for key, value in info.items():
            if key.endswith(".context_length") and isinstance(value, int):
                return value
        return None

    async def loaded(self) -> list[LoadedModel]:
        data = await self._get("/api/ps")
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

    async def _get(self, path: str) -> dict[str, Any]:
        try:
            resp = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise _translate(exc, self.host) from exc
        return _decode(resp, model="")

    async def _post(self, path: str, payload: dict[str, Any], *, model: str) -> dict[str, Any]:
        try:
            resp = await self._client.post(
                path, content=orjson.dumps(payload), headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise _translate(exc, self.host) from exc
        return _decode(resp, model=model)


def _translate(exc: httpx.HTTPError, host: str) -> TransientError:
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return BackendUnavailable(f"cannot connect to {host}: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return BackendTimeout(f"no reply from {host} in time ({type(exc).__name__})")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        # The server closed the connection mid-call: it crashed or restarted.
        return BackendServerError(f"connection to {host} dropped: {exc}", status_code=502)
    return BackendUnavailable(f"{host}: {exc}")


def _decode(resp: httpx.Response, *, model: str) -> dict[str, Any]:
    try:
        data = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        data = None
    if resp.status_code == 200:
        if not isinstance(data, dict):
            raise BackendServerError("server answered 200 with a body that is not JSON", status_code=502)
        return data
    message = str(data.get("error")) if isinstance(data, dict) and data.get("error") else resp.text[:500]
    raise_for_status(resp.status_code, message, model=model, retry_after=resp.headers.get("retry-after"))
    raise AssertionError("unreachable")


def raise_for_status(status: int, message: str, *, model: str, retry_after: str | None = None) -> None:
    """The one mapping from an HTTP error to what the runner does next (shared with openai)."""
    lowered = message.lower()
    if status == 404:
        raise ModelNotFound(message or f"model {model!r} not found", status_code=404)
    if status in (429, 503):
        raise BackendBusy(message, status_code=status, retry_after=_seconds(retry_after))
    if status >= 500:
        if any(h in lowered for h in _OOM_HINTS):
            raise BackendOutOfMemory(message, status_code=status)
        raise BackendServerError(message, status_code=status)
    if status in (400, 413) and any(h in lowered for h in _OVERFLOW_HINTS):
        raise ContextLengthExceeded(message, status_code=status)
    raise BadRequest(message, status_code=status)


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
