"""Typed replies of the servers batchd talks to: parsed once in the backends, read as attributes after.

In the manner of ollama-python's ``_types.py``: one pydantic model per reply, every field
documented with what the server means by it, unknown fields ignored (servers add fields
release by release), missing counters ``None`` rather than a silent ``0``. Field meanings
follow Ollama's ``api/types.go`` (``ChatResponse``, ``Metrics``, ``ShowResponse``,
``ProcessModelResponse``) and OpenAI's ``chat.completion`` object; llama.cpp's server adds
``timings`` to the latter.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# --------------------------------------------------------------------------- Ollama


class OllamaMessage(_Wire):
    role: str = "assistant"
    #: the answer text (the JSON document when ``format`` was set)
    content: str
    #: a thinking model's reasoning, separate from ``content`` when ``think`` was on
    thinking: str | None = None


class OllamaChatResponse(_Wire):
    """``POST /api/chat`` with ``stream: false``."""

    model: str | None = None
    message: OllamaMessage
    done: bool = True
    #: why generation stopped: ``stop`` (an end token or stop string), ``length`` (``num_predict`` or the
    #: window), ``load``/``unload`` for empty calls; older servers omit it
    done_reason: str | None = None
    #: nanoseconds for the whole call, model load included
    total_duration: int | None = None
    #: nanoseconds spent loading the model for this call: a jump means the server reloaded it
    load_duration: int | None = None
    #: prompt tokens; 0.30.0 counted only the uncached ones (ollama PR 16428), older servers omit it on a
    #: full cache hit
    prompt_eval_count: int | None = None
    #: prompt tokens served from the cache (newer servers only)
    prompt_eval_cached_count: int | None = None
    prompt_eval_duration: int | None = None
    #: tokens generated
    eval_count: int | None = None
    eval_duration: int | None = None


class OllamaShowResponse(_Wire):
    """``POST /api/show``: the model's metadata."""

    #: GGUF metadata, e.g. ``"gemma3.context_length": 131072``
    model_info: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    capabilities: list[str] = Field(default_factory=list)

    def context_length(self) -> int | None:
        """The model's trained window (``<arch>.context_length``), when the server says."""
        for key, value in self.model_info.items():
            if key.endswith(".context_length") and isinstance(value, int):
                return value
        return None


class OllamaProcessModel(_Wire):
    """One entry of ``GET /api/ps``."""

    name: str = ""
    model: str = ""
    #: bytes the loaded model takes in all
    size: int = 0
    #: bytes of it in GPU memory; less than ``size`` means part runs on the CPU
    size_vram: int = 0
    #: the window it was loaded with (newer servers only)
    context_length: int | None = None
    expires_at: str | None = None


class OllamaPsResponse(_Wire):
    models: list[OllamaProcessModel] = Field(default_factory=list)


class OllamaVersion(_Wire):
    """``GET /api/version``."""

    version: str


# --------------------------------------------------------------------------- OpenAI-compatible


class OpenAIMessage(_Wire):
    role: str = "assistant"
    #: ``None`` for tool calls and refusals, which batchd does not ask for
    content: str | None = None


class OpenAIChoice(_Wire):
    index: int = 0
    message: OpenAIMessage
    #: ``stop``, ``length``, ``content_filter``, ``tool_calls``
    finish_reason: str | None = None


class PromptTokensDetails(_Wire):
    #: prompt tokens served from the prefix cache (vLLM, llama.cpp, OpenAI)
    cached_tokens: int | None = None


class OpenAIUsage(_Wire):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None


class LlamaTimings(_Wire):
    """llama.cpp's server: what the slot evaluated for this call."""

    #: prompt tokens reused from the slot's cache
    cache_n: int | None = None
    #: prompt tokens evaluated (not cached)
    prompt_n: int | None = None
    predicted_n: int | None = None


class ChatCompletion(_Wire):
    """``POST /v1/chat/completions`` (non-streaming)."""

    id: str | None = None
    model: str | None = None
    choices: list[OpenAIChoice] = Field(default_factory=list)
    usage: OpenAIUsage | None = None
    timings: LlamaTimings | None = None

    def cached_tokens(self) -> int | None:
        """Prompt tokens the server reused, from whichever of its two ways it tells."""
        details = self.usage.prompt_tokens_details if self.usage else None
        if details is not None and details.cached_tokens is not None:
            return details.cached_tokens
        return self.timings.cache_n if self.timings is not None else None


class OpenAIModel(_Wire):
    """One entry of ``GET /v1/models``; the window under whichever name the server uses."""

    id: str
    #: vLLM
    max_model_len: int | None = None
    #: some proxies
    context_length: int | None = None
    #: llama.cpp: ``n_ctx`` (per server), ``n_ctx_train``
    meta: dict[str, Any] = Field(default_factory=dict)


class OpenAIModelList(_Wire):
    data: list[OpenAIModel] = Field(default_factory=list)
