"""The Backend Protocol and the request/result records every backend speaks.

A backend turns one ``ChatRequest`` into one ``ChatResult`` or raises an error
from ``batchd.errors``. Options use Ollama's names (``num_predict``,
``temperature``, ``seed``, ``top_p``, ``stop``); each backend maps them to its
own wire format.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

#: Ollama option name -> OpenAI body key: the one table both directions come from
OLLAMA_TO_OPENAI = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
#: OpenAI body keys that become Ollama-style options
OPENAI_OPTION_KEYS = {**{v: k for k, v in OLLAMA_TO_OPENAI.items()}, "max_completion_tokens": "num_predict"}


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    num_ctx: int
    options: dict[str, Any] = field(default_factory=dict)
    #: None, "json", or a JSON schema
    format: dict[str, Any] | str | None = None
    custom_id: str = ""
    #: the lane that sends it; a multi-host backend keeps a lane on one host (its prefix cache)
    affinity: int | None = None
    #: thinking asked for by the request or pipeline (True/False or a level); None: not asked
    think: bool | str | None = None
    #: OpenAI ``tools`` (function definitions) and ``tool_choice``, as the line gave them
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    #: a ``/v1/completions`` line's prompt: sent as a completion (Ollama ``/api/generate``, ``/v1/completions``);
    #: ``messages`` then hold it as one user turn, for the context's token estimates only
    prompt: str | None = None


@dataclass(frozen=True)
class ChatResult:
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    latency_s: float = 0.0
    #: prompt tokens the server reused from its cache, where it tells
    cached_tokens: int | None = None
    #: seconds the server spent loading the model for this call (Ollama ``load_duration``)
    load_seconds: float | None = None
    #: tool calls in OpenAI's shape (``id``, ``type: function``, ``function.name``, ``function.arguments``
    #: as a JSON string); empty when the model answered in text
    tool_calls: tuple[dict[str, Any], ...] = ()

    def completion_body(self, created: int | None = None) -> dict[str, Any]:
        """The reply as an OpenAI ``chat.completion`` object (``content`` null beside tool calls, as OpenAI)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message = {"role": "assistant", "content": self.content or None, "tool_calls": list(self.tool_calls)}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": created if created is not None else int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            },
        }


@dataclass(frozen=True)
class EmbedRequest:
    """One embeddings call: several lines' inputs packed together, in order."""

    model: str
    inputs: list[str]
    #: OpenAI ``dimensions`` (Ollama truncates and renormalises); None: the model's own
    dimensions: int | None = None


@dataclass(frozen=True)
class EmbedResult:
    #: one packed little-endian float32 row per input, in order (``backends.vectors``)
    vectors: list[bytes]
    #: tokens of all the inputs together, where the server says (0 where it does not)
    prompt_tokens: int
    model: str
    latency_s: float = 0.0


@dataclass(frozen=True)
class Fingerprint:
    """Which model answers: ``id`` in OpenAI's ``system_fingerprint`` form (``fp_`` + 12 hex), the
    facts it was made from (digest, family, parameter size, quantisation, file hash...)."""

    id: str
    details: dict[str, Any] = field(default_factory=dict)


def fingerprint_id(*parts: object) -> str:
    return "fp_" + hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class LoadedModel:
    """One entry of the server's loaded models (Ollama ``/api/ps``)."""

    name: str
    size: int
    size_vram: int
    context_length: int | None = None


@runtime_checkable
class Backend(Protocol):
    kind: str
    host: str

    async def chat(self, request: ChatRequest) -> ChatResult:
        """One chat call; raises TransientError, RequestError or JobError subclasses."""
        ...

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """One embeddings call; raises like ``chat`` (a model that cannot embed: a RequestError)."""
        ...

    async def ping(self) -> None:
        """Cheap liveness probe; raises BackendUnavailable when the server is down."""
        ...

    async def context_length(self, model: str) -> int | None:
        """The model's trained context window; raises ModelNotFound."""
        ...

    async def loaded(self) -> list[LoadedModel]:
        """Models in memory with their VRAM use; empty when the server cannot tell."""
        ...

    async def aclose(self) -> None: ...


def finish_reason(done_reason: str | None, *, tool_calls: bool = False) -> str:
    """OpenAI's ``finish_reason``: a stop with tool calls is ``tool_calls`` (as Ollama's own ``/v1`` says)."""
    if done_reason == "length":
        return "length"
    return "tool_calls" if tool_calls else "stop"


def answering_model(backend: Backend, requested: str) -> dict[str, str]:
    """Who answers a job that asks for ``requested``, for ``job_started``.

    A server runs the model asked for; a backend that serves one fixed model
    whatever the name (embedded: its GGUF) says so through ``describe_model``.
    """
    describe = getattr(backend, "describe_model", None)
    if describe is None:
        return {"model": requested}
    described: dict[str, str] = describe(requested)
    return described
