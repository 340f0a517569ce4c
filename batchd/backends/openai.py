"""The OpenAI-compatible backend: ``POST {url}/v1/chat/completions``.

For vLLM, llama.cpp's server, SGLang, LM Studio, LiteLLM or a remote vLLM
cluster. Options arrive in Ollama's names and are mapped to OpenAI's; the
context window is the server's business (``num_ctx`` is never sent). Errors
go through ``backends.http``, the same mapping the Ollama backend uses.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from batchd.backends.base import (
    OLLAMA_TO_OPENAI,
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    Fingerprint,
    LoadedModel,
    fingerprint_id,
    finish_reason,
)
from batchd.backends.http import JsonHttp, decode, translate
from batchd.backends.messages import openai_messages, passed_calls
from batchd.backends.transport import make_client
from batchd.backends.vectors import pack_rows
from batchd.backends.wire import ChatCompletion, LlamaCompletion, OpenAIModel, OpenAIModelList, OpenAIUsage
from batchd.errors import ModelNotFound
from batchd.formats import to_response_format
from batchd.redact import redact_url

#: Ollama option name -> OpenAI body key; anything else (num_ctx, num_gpu, ...) is server-side
_OPTION_KEYS = {
    **OLLAMA_TO_OPENAI,
    # not OpenAI's, but vLLM, SGLang and llama.cpp's server accept them
    "top_k": "top_k",
    "min_p": "min_p",
}


def to_body(request: ChatRequest) -> dict[str, Any]:
    """The ``/v1/chat/completions`` body for a backend-neutral request."""
    body: dict[str, Any] = {"model": request.model, "messages": openai_messages(request.messages), "stream": False}
    for name, key in _OPTION_KEYS.items():
        value = request.options.get(name)
        if value is None or (name == "num_predict" and int(value) <= 0):  # Ollama's -1 = unlimited
            continue
        body[key] = value
    response_format = to_response_format(request.format)
    if response_format is not None:
        body["response_format"] = response_format
    if request.tools:
        body["tools"] = request.tools
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
    return body


class OpenAIBackend:
    kind = "openai"

    def __init__(
        self,
        *,
        url: str,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        api_key: str | None = None,
        max_connections: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.host = url.rstrip("/")
        # A base URL given with /v1 (the OpenAI SDK habit) must not become /v1/v1/...
        self.host = self.host.removesuffix("/v1")
        # The key lives only in the client's headers: never an attribute a repr or a log could show.
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = make_client(
            self.host,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )
        self.host = redact_url(self.host)  # the client keeps the credentials; logs and errors never see them
        self._http = JsonHttp(self._client, self.host)

    def __repr__(self) -> str:
        return f"OpenAIBackend(url={self.host!r})"

    async def chat(self, request: ChatRequest) -> ChatResult:
        if request.prompt is not None:
            return await self._complete(request)
        started = time.perf_counter()
        reply = await self._http.post(
            "/v1/chat/completions", to_body(request), model=request.model, reply=ChatCompletion
        )
        content = reply.content()
        usage = reply.usage or OpenAIUsage()
        calls = passed_calls(reply.choices[0].message.tool_calls)
        return ChatResult(
            content=content,
            tool_calls=calls,
            finish_reason=finish_reason(reply.choices[0].finish_reason, tool_calls=bool(calls)),
            prompt_tokens=usage.prompt_tokens or 0,
            completion_tokens=usage.completion_tokens or 0,
            model=reply.model or request.model,
            latency_s=time.perf_counter() - started,
            cached_tokens=reply.cached_tokens(),
        )

    async def _complete(self, request: ChatRequest) -> ChatResult:
        """A completion: ``POST /v1/completions`` (vLLM, llama.cpp's server, Ollama serve it)."""
        body = to_body(request)
        del body["messages"]
        body["prompt"] = request.prompt
        body.pop("tools", None)
        started = time.perf_counter()
        reply = await self._http.post("/v1/completions", body, model=request.model, reply=LlamaCompletion)
        usage = reply.usage or OpenAIUsage()
        return ChatResult(
            content=reply.choices[0].text,
            finish_reason=finish_reason(reply.choices[0].finish_reason),
            prompt_tokens=usage.prompt_tokens or 0,
            completion_tokens=usage.completion_tokens or 0,
            model=reply.model or request.model,
            latency_s=time.perf_counter() - started,
        )

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """``POST /v1/embeddings`` with every input at once, floats asked for (batchd encodes the results)."""
        payload: dict[str, Any] = {"model": request.model, "input": request.inputs, "encoding_format": "float"}
        if request.dimensions is not None:
            payload["dimensions"] = request.dimensions
        started = time.perf_counter()
        data = await self._http.post_raw("/v1/embeddings", payload, model=request.model)
        items = data.get("data")
        if isinstance(items, list) and all(isinstance(d, dict) for d in items):
            items = [d.get("embedding") for d in sorted(items, key=lambda d: d.get("index") or 0)]
        usage = data.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return EmbedResult(
            vectors=pack_rows(items, len(request.inputs)),
            prompt_tokens=tokens if isinstance(tokens, int) else 0,
            model=str(data.get("model") or request.model),
            latency_s=time.perf_counter() - started,
        )

    async def ping(self) -> None:
        """Any HTTP answer below 500 means the server is up (some proxies lack ``/v1/models``)."""
        try:
            resp = await self._client.get("/v1/models")
        except httpx.HTTPError as exc:
            raise translate(exc, self.host) from exc
        if resp.status_code >= 500:
            decode(resp, model="")

    async def context_length(self, model: str) -> int | None:
        entries = await self.models()
        if not entries:
            return None
        entry = entries.get(model) or entries.get(model.removesuffix(":latest"))
        if entry is None:
            raise ModelNotFound(
                f"model {model!r} is not served by {self.host} (it serves: {', '.join(sorted(entries)[:10])})",
                status_code=404,
            )
        return entry.window()

    async def models(self) -> dict[str, OpenAIModel]:
        """``GET /v1/models`` as ``{id: entry}``."""
        listing = await self._http.get("/v1/models", OpenAIModelList)
        return {m.id: m for m in listing.data if m.id}

    async def fingerprint(self, model: str) -> Fingerprint | None:
        """What ``/v1/models`` says of the model (its id, window, llama.cpp's training window); an
        OpenAI-compatible server tells no digest, so a changed file under the same name may go unseen."""
        entries = await self.models()
        entry = entries.get(model) or entries.get(model.removesuffix(":latest"))
        if entry is None:
            return None
        facts = {"host": self.host, "model": entry.id, "window": str(entry.window())}
        return Fingerprint(id=fingerprint_id(*facts.values()), details=facts)

    async def loaded(self) -> list[LoadedModel]:
        return []  # the OpenAI protocol does not say what is in VRAM

    async def aclose(self) -> None:
        await self._client.aclose()
