"""The one mapping from HTTP transport errors and statuses to ``batchd.errors``.

Shared by every backend that speaks HTTP (ollama, openai): ``translate`` for
httpx exceptions, ``decode`` for a response, ``error_of`` for an error body,
``raise_for_status`` for a status code and its message; ``JsonHttp`` calls all
of them and hands back the reply as its ``wire`` model. Callers see only
``batchd.errors`` classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import orjson

from batchd.backends.wire import ErrorDetail, ErrorReply, Wire, parse
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
    Unauthorized,
)

_W = TypeVar("_W", bound=Wire)

# A crashed runner: out of memory mostly. "llama runner process has terminated" is the Go runner's
# (<= 0.24); "model runner has unexpectedly stopped" and "llama-server process no longer running" are
# Ollama >= 0.30's (ollama/ollama llm/llama_server.go). All are transient: trim hard, back off, retry.
#: llama.cpp's server answers a request for a feature it was not started with (``--jinja``) by a 500
#: (a ``std::runtime_error`` in ``oaicompat_chat_params_parse``): these say it is permanent, not a hiccup
_UNSUPPORTED_HINTS = ("requires --jinja", "unsupported param:", "cannot use tools with stream")
_OOM_HINTS = (
    "out of memory",
    "runner process has terminated",
    "cudamalloc",
    "oom",
    "unable to allocate",
    "model runner has unexpectedly stopped",
    "llama-server process no longer running",
)
# Ollama: "the input length exceeds the context length"; vLLM / OpenAI: "This model's maximum
# context length is N tokens"; llama.cpp server: "request (N tokens) exceeds the available context size
# (M tokens), try increasing it".
_OVERFLOW_HINTS = ("context length", "context window", "context size", "exceeds", "too long", "num_ctx")
_OVERFLOW_CODES = ("context_length_exceeded", "exceed_context_size_error")
# llama.cpp tools/server words the numbers into the message too (older builds send no fields)
_OVERFLOW_NUMBERS = re.compile(r"request \((\d+) tokens\) exceeds the available context size \((\d+) tokens\)")


@dataclass(frozen=True)
class ErrorBody:
    """What an error reply says: a human message, a machine code, and overflow numbers where given."""

    message: str
    code: str | None = None
    n_ctx: int | None = None
    n_prompt_tokens: int | None = None


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
    err = error_of(data, resp.text)
    raise_for_status(
        resp.status_code,
        err.message,
        model=model,
        code=err.code,
        retry_after=resp.headers.get("retry-after"),
        n_ctx=err.n_ctx,
        n_prompt_tokens=err.n_prompt_tokens,
    )
    raise AssertionError("unreachable")


def error_of(data: Any, text: str) -> ErrorBody:
    """The error of a reply body, whichever server shaped it.

    - Ollama: ``{"error": "..."}``. Since 0.30 the string may itself be llama-server's JSON body
      (ollama/ollama ``llm/llama_server.go`` passes the runner's body through as the message).
    - llama.cpp's server: ``{"error": {"code": 400, "message", "type", "n_prompt_tokens", "n_ctx"}}``.
    - OpenAI, vLLM and Ollama's ``/v1``: ``{"error": {"message", "type", "param", "code"}}``
      (``code`` may be null: ollama/ollama ``openai/openai.go`` ``NewError``).
    """
    if not isinstance(data, dict):
        return ErrorBody(text[:500])
    reply = ErrorReply.model_validate(data)  # lenient: odd fields become None, it never raises
    err = reply.error
    if isinstance(err, str) and err.lstrip().startswith("{"):
        try:
            inner = orjson.loads(err)
        except orjson.JSONDecodeError:
            inner = None
        if isinstance(inner, dict) and ErrorReply.model_validate(inner).error is not None:
            return error_of(inner, err)
    if isinstance(err, ErrorDetail):
        # llama.cpp puts the HTTP status in "code" and the meaning in "type"
        named = err.type if err.type is not None and (err.code is None or isinstance(err.code, int)) else err.code
        return _with_numbers(
            ErrorBody(err.message or text[:500], str(named) if named else None, err.n_ctx, err.n_prompt_tokens)
        )
    if err:
        return _with_numbers(ErrorBody(err))
    if reply.message is not None:  # some proxies (LiteLLM, FastAPI)
        return ErrorBody(reply.message)
    return ErrorBody(text[:500])


def _with_numbers(err: ErrorBody) -> ErrorBody:
    if err.n_ctx is not None and err.n_prompt_tokens is not None:
        return err
    found = _OVERFLOW_NUMBERS.search(err.message)
    if found is None:
        return err
    return ErrorBody(
        err.message, err.code, err.n_ctx or int(found.group(2)), err.n_prompt_tokens or int(found.group(1))
    )


def raise_for_status(
    status: int,
    message: str,
    *,
    model: str,
    code: str | None = None,
    retry_after: str | None = None,
    n_ctx: int | None = None,
    n_prompt_tokens: int | None = None,
) -> None:
    """The one mapping from an HTTP error to what the runner does next."""
    lowered = message.lower()
    if status == 404:
        raise ModelNotFound(message or f"model {model!r} not found", status_code=404)
    if status in (401, 403):
        # A wrong or missing API key fails every request alike: stop the job, not 170,000 lines.
        raise Unauthorized(f"the server refused the credentials (HTTP {status}): {message}", status_code=status)
    if status in (429, 503):
        raise BackendBusy(message, status_code=status, retry_after=seconds(retry_after))
    if status >= 500:
        if any(h in lowered for h in _OOM_HINTS):
            raise BackendOutOfMemory(message, status_code=status)
        if any(h in lowered for h in _UNSUPPORTED_HINTS):
            raise BadRequest(message, status_code=status)  # the line's error: five retries would change nothing
        raise BackendServerError(message, status_code=status)
    if status in (400, 413) and (code in _OVERFLOW_CODES or any(h in lowered for h in _OVERFLOW_HINTS)):
        raise ContextLengthExceeded(message, status_code=status, n_ctx=n_ctx, n_prompt_tokens=n_prompt_tokens)
    raise BadRequest(message, status_code=status)


def seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (the HTTP-date form is rare from LLM servers: ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class JsonHttp:
    """GET/POST of JSON with every httpx error translated and the reply parsed into its ``wire`` model:
    the one call path of the HTTP backends."""

    def __init__(self, client: httpx.AsyncClient, host: str) -> None:
        self.client = client
        self.host = host

    async def get(self, path: str, reply: type[_W]) -> _W:
        try:
            resp = await self.client.get(path)
        except httpx.HTTPError as exc:
            raise translate(exc, self.host) from exc
        return parse(reply, decode(resp, model=""))

    async def post_raw(self, path: str, payload: dict[str, Any], *, model: str) -> dict[str, Any]:
        """POST and decode, without a ``wire`` model: for replies too large to validate field by field
        (embedding vectors, checked by ``backends.vectors``)."""
        try:
            resp = await self.client.post(
                path, content=orjson.dumps(payload), headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise translate(exc, self.host) from exc
        return decode(resp, model=model)

    async def post(self, path: str, payload: dict[str, Any], *, model: str, reply: type[_W]) -> _W:
        try:
            resp = await self.client.post(
                path, content=orjson.dumps(payload), headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise translate(exc, self.host) from exc
        return parse(reply, decode(resp, model=model))
