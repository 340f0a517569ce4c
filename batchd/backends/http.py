"""The one mapping from HTTP transport errors and statuses to ``batchd.errors``.

Shared by every backend that speaks HTTP (ollama, openai): ``translate`` for
httpx exceptions, ``decode`` for a response, ``raise_for_status`` for a status
code and its message. Callers see only ``batchd.errors`` classes.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from batchd.errors import (
    BackendBusy,
    BackendOutOfMemory,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    BadRequest,
    ContextLengthExceeded,
    JobError,
    ModelNotFound,
    TransientError,
)

_OOM_HINTS = ("out of memory", "runner process has terminated", "cudamalloc", "oom", "unable to allocate")
# Ollama: "the input length exceeds the context length"; vLLM / OpenAI: "This model's maximum
# context length is N tokens"; llama.cpp server: "the request exceeds the available context size".
_OVERFLOW_HINTS = ("context length", "context window", "context size", "exceeds", "too long", "num_ctx")
_OVERFLOW_CODES = ("context_length_exceeded", "exceed_context_size_error")


def translate(exc: httpx.HTTPError, host: str) -> TransientError:
    """An httpx exception as the transient error that says what to do next."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return BackendUnavailable(f"cannot connect to {host}: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return BackendTimeout(f"no reply from {host} in time ({type(exc).__name__})")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        # The server closed the connection mid-call: it crashed or restarted.
        return BackendServerError(f"connection to {host} dropped: {exc}", status_code=502)
    return BackendUnavailable(f"{host}: {exc}")


def decode(resp: httpx.Response, *, model: str) -> dict[str, Any]:
    """The JSON object of a 200 reply; any other status raises its ``batchd.errors`` class."""
    try:
        data = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        data = None
    if resp.status_code == 200:
        if not isinstance(data, dict):
            raise BackendServerError("server answered 200 with a body that is not JSON", status_code=502)
        return data
    message, code = _error_of(data, resp.text)
    raise_for_status(resp.status_code, message, model=model, code=code, retry_after=resp.headers.get("retry-after"))
    raise AssertionError("unreachable")


def _error_of(data: Any, text: str) -> tuple[str, str | None]:
    """(message, code) from Ollama's ``{"error": "..."}`` or OpenAI's ``{"error": {"message", "code"}}``."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        return str(err.get("message") or text[:500]), str(code) if code else None
    if isinstance(err, str) and err:
        return err, None
    if isinstance(data, dict) and isinstance(data.get("message"), str):  # some proxies (LiteLLM, FastAPI)
        return str(data["message"]), None
    return text[:500], None


def raise_for_status(status: int, message: str, *, model: str, code: str | None = None,
                     retry_after: str | None = None) -> None:
    """The one mapping from an HTTP error to what the runner does next."""
    lowered = message.lower()
    if status == 404:
        raise ModelNotFound(message or f"model {model!r} not found", status_code=404)
    if status in (401, 403):
        # A wrong or missing API key fails every request alike: stop the job, not 170,000 lines.
        raise JobError(f"the server refused the credentials (HTTP {status}): {message}", status_code=status)
    if status in (429, 503):
        raise BackendBusy(message, status_code=status, retry_after=seconds(retry_after))
    if status >= 500:
        if any(h in lowered for h in _OOM_HINTS):
            raise BackendOutOfMemory(message, status_code=status)
        raise BackendServerError(message, status_code=status)
    if status in (400, 413) and (code in _OVERFLOW_CODES or any(h in lowered for h in _OVERFLOW_HINTS)):
        raise ContextLengthExceeded(message, status_code=status)
    raise BadRequest(message, status_code=status)


def seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (the HTTP-date form is rare from LLM servers: ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class JsonHttp:
    """GET/POST of JSON with every httpx error translated: the one call path of the HTTP backends."""

    def __init__(self, client: httpx.AsyncClient, host: str) -> None:
        self.client = client
        self.host = host

    async def get(self, path: str) -> dict[str, Any]:
        try:
            resp = await self.client.get(path)
        except httpx.HTTPError as exc:
            raise translate(exc, self.host) from exc
        return decode(resp, model="")

    async def post(self, path: str, payload: dict[str, Any], *, model: str) -> dict[str, Any]:
        try:
            resp = await self.client.post(
                path, content=orjson.dumps(payload), headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise translate(exc, self.host) from exc
        return decode(resp, model=model)
