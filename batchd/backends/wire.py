"""Typed replies of the servers batchd talks to: parsed once in the backends, read as attributes after.

In the manner of ollama-python's ``_types.py``: one pydantic model per reply, every field
documented with what the server means by it, unknown fields ignored (servers add fields
release by release), missing counters ``None`` rather than a silent ``0``. Field meanings
follow Ollama's ``api/types.go`` (``ChatResponse``, ``Metrics``, ``ShowResponse``,
``ProcessModelResponse``) and OpenAI's ``chat.completion`` object; llama.cpp's server adds
``timings`` to the latter. Error bodies (``ErrorReply``) are read the same way, leniently:
an odd field there is dropped, never a reason to lose the message.

``parse`` is the one door: a 200 reply that does not validate is a ``BackendServerError``
(HTTP 502) naming the first field that is missing or wrong, as a proxy's garbage would be.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from batchd.errors import BackendServerError


class Wire(BaseModel):
    """A server reply: unknown fields ignored, immutable once parsed."""

    model_config = ConfigDict(extra="ignore", frozen=True)


_W = TypeVar("_W", bound=Wire)


def parse(model: type[_W], data: Any) -> _W:
    """``data`` (a decoded 200 body) as ``model``; a reply that does not fit is the server's fault."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BackendServerError(
            f"reply has no valid {field_path(first['loc'])} ({first['msg']})", status_code=502
        ) from exc


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("choices", 0, "message")`` as ``choices[0].message``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "body"


def _none_as_empty(value: Any) -> Any:
    # Go marshals a nil slice or map as null (ollama's handlers do for an empty /api/ps, older /api/show).
    return {} if value is None else value


def _none_as_empty_list(value: Any) -> Any:
    return [] if value is None else value


def _count_or_none(value: Any) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _text_or_none(value: Any) -> Any:
    return value if isinstance(value, str) else None


def _text_or_empty(value: Any) -> Any:
    return value if isinstance(value, str) else ""


def _text_if_any(value: Any) -> Any:
    return str(value) if value else None


#: a dict that may arrive as null
_Map = Annotated[dict[str, Any], BeforeValidator(_none_as_empty)]
#: a positive count where one is given; anything else (a string, 0, -1, true) is "not said"
_Count = Annotated[int | None, BeforeValidator(_count_or_none)]


# --------------------------------------------------------------------------- Ollama


class OllamaToolFunction(Wire):
    """``api/types.go`` ``ToolCallFunction``."""

    name: str
    #: an object (Ollama parses the model's call), not OpenAI's JSON string
    arguments: _Map = Field(default_factory=dict)
    index: int = 0


class OllamaToolCall(Wire):
    """``api/types.go`` ``ToolCall``; ``id`` is ``call_xxxxxxxx`` on newer servers, absent on older ones."""

    id: str | None = None
    function: OllamaToolFunction


class OllamaMessage(Wire):
    role: str = "assistant"
    #: the answer text (the JSON document when ``format`` was set); empty beside tool calls
    content: str
    #: a thinking model's reasoning, separate from ``content`` when ``think`` was on
    thinking: str | None = None
    #: the model's tool calls, when the request gave ``tools``
    tool_calls: Annotated[list[OllamaToolCall], BeforeValidator(_none_as_empty_list)] = Field(default_factory=list)


class OllamaChatResponse(Wire):
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


class OllamaGenerateResponse(Wire):
    """``POST /api/generate`` with ``stream: false`` (``api/types.go`` ``GenerateResponse``)."""

    model: str | None = None
    #: the completion text
    response: str
    done_reason: str | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None


class OllamaShowResponse(Wire):
    """``POST /api/show``: the model's metadata."""

    #: GGUF metadata, e.g. ``"gemma3.context_length": 131072``
    model_info: _Map = Field(default_factory=dict)
    #: ``format``, ``family``, ``parameter_size``, ``quantization_level`` (``api/types.go`` ``ModelDetails``)
    details: _Map = Field(default_factory=dict)
    #: ``completion``, ``tools``, ``thinking``, ``vision``, ``embedding``, ... (newer servers only)
    capabilities: Annotated[list[str], BeforeValidator(_none_as_empty_list)] = Field(default_factory=list)

    def context_length(self) -> int | None:
        """The model's trained window (``<arch>.context_length``), when the server says."""
        for key, value in self.model_info.items():
            if key.endswith(".context_length") and isinstance(value, int):
                return value
        return None


class OllamaTag(Wire):
    """One entry of ``GET /api/tags`` (``api/types.go`` ``ListModelResponse``)."""

    name: str = ""
    model: str = ""
    #: the model's content digest: a re-pull under the same tag changes it
    digest: str = ""
    #: ``family``, ``parameter_size``, ``quantization_level``
    details: _Map = Field(default_factory=dict)


class OllamaTags(Wire):
    """``GET /api/tags``: the models the server has."""

    models: Annotated[list[OllamaTag], BeforeValidator(_none_as_empty_list)] = Field(default_factory=list)


class OllamaProcessModel(Wire):
    """One entry of ``GET /api/ps`` (``api/types.go`` ``ProcessModelResponse``)."""

    #: the name it was asked for by, e.g. ``gemma3:4b``
    name: str = ""
    #: the same, or the full name; some proxies send only this one
    model: str = ""
    #: bytes the loaded model takes in all
    size: int = 0
    #: bytes of it in GPU memory; less than ``size`` means part runs on the CPU
    size_vram: int = 0
    #: the window it was loaded with (newer servers only)
    context_length: int | None = None
    #: when ``keep_alive`` runs out and the server unloads it (RFC 3339)
    expires_at: str | None = None

    @property
    def label(self) -> str:
        """The name to show: ``name``, else ``model``."""
        return self.name or self.model


class OllamaPsResponse(Wire):
    """``GET /api/ps``: the models in memory now."""

    models: Annotated[list[OllamaProcessModel], BeforeValidator(_none_as_empty_list)] = Field(default_factory=list)


class OllamaVersion(Wire):
    """``GET /api/version``."""

    #: e.g. ``"0.33.0"``; builds from source say ``"0.0.0"``
    version: str


# --------------------------------------------------------------------------- OpenAI-compatible


class OpenAIFunctionCall(Wire):
    name: str
    #: a JSON document as a string (OpenAI's shape)
    arguments: str = ""


class OpenAIToolCall(Wire):
    id: str = ""
    type: str = "function"
    function: OpenAIFunctionCall


class OpenAIMessage(Wire):
    role: str = "assistant"
    #: ``None`` beside tool calls and for refusals
    content: str | None = None
    tool_calls: Annotated[list[OpenAIToolCall], BeforeValidator(_none_as_empty_list)] = Field(default_factory=list)


class OpenAIChoice(Wire):
    index: int = 0
    message: OpenAIMessage
    #: ``stop``, ``length``, ``content_filter``, ``tool_calls``
    finish_reason: str | None = None


class PromptTokensDetails(Wire):
    """``usage.prompt_tokens_details``."""

    #: prompt tokens served from the prefix cache (vLLM, llama.cpp, OpenAI)
    cached_tokens: int | None = None


class OpenAIUsage(Wire):
    """``usage``: token counts of this call."""

    #: all prompt tokens, cached ones included
    prompt_tokens: int | None = None
    #: tokens generated
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None


class LlamaTimings(Wire):
    """llama.cpp's server: what the slot evaluated for this call."""

    #: prompt tokens reused from the slot's cache
    cache_n: int | None = None
    #: prompt tokens evaluated (not cached)
    prompt_n: int | None = None
    #: tokens generated
    predicted_n: int | None = None


class ChatCompletion(Wire):
    """``POST /v1/chat/completions`` (non-streaming)."""

    id: str | None = None
    #: the served name, which may differ from the one asked for (vLLM ``--served-model-name``)
    model: str | None = None
    #: one per ``n``; batchd asks for one
    choices: list[OpenAIChoice] = Field(default_factory=list)
    usage: OpenAIUsage | None = None
    #: llama.cpp's server only
    timings: LlamaTimings | None = None

    def content(self) -> str:
        """The first choice's text ("" beside tool calls); a reply without either is the server's fault (502)."""
        if self.choices and self.choices[0].message.tool_calls:
            return self.choices[0].message.content or ""
        if not self.choices or self.choices[0].message.content is None:
            raise BackendServerError("reply has no valid choices[0].message.content (missing or null)", status_code=502)
        return self.choices[0].message.content

    def cached_tokens(self) -> int | None:
        """Prompt tokens the server reused, from whichever of its two ways it tells."""
        details = self.usage.prompt_tokens_details if self.usage else None
        if details is not None and details.cached_tokens is not None:
            return details.cached_tokens
        return self.timings.cache_n if self.timings is not None else None


class LlamaModelMeta(Wire):
    """llama.cpp's server: ``meta`` of a ``/v1/models`` entry."""

    #: the window the server was started with (``-c``), all slots together
    n_ctx: _Count = None
    #: the window the model was trained with
    n_ctx_train: _Count = None


class OpenAIModel(Wire):
    """One entry of ``GET /v1/models``; the window under whichever name the server uses."""

    #: the name requests use; entries without one are skipped
    id: Annotated[str, BeforeValidator(_text_or_empty)] = ""
    #: vLLM
    max_model_len: _Count = None
    #: LM Studio, OpenRouter-style listings
    context_length: _Count = None
    #: llama.cpp's server
    meta: LlamaModelMeta | None = None

    def window(self) -> int | None:
        """The served context window, where the server tells (the served one before the trained one)."""
        meta = self.meta or LlamaModelMeta()
        for value in (self.max_model_len, meta.n_ctx, self.context_length, meta.n_ctx_train):
            if value is not None:
                return value
        return None


class OpenAIModelList(Wire):
    """``GET /v1/models``."""

    data: Annotated[list[OpenAIModel], BeforeValidator(_none_as_empty_list)] = Field(default_factory=list)


# --------------------------------------------------------------------------- llama-cpp-python (embedded)


class LlamaCompletionChoice(Wire):
    text: str
    #: ``stop`` or ``length``
    finish_reason: str | None = None


class LlamaCompletion(Wire):
    """A ``text_completion``: ``Llama.create_completion()``'s dict in process, ``/v1/completions`` over HTTP."""

    model: str | None = None
    choices: list[LlamaCompletionChoice] = Field(min_length=1)
    usage: OpenAIUsage | None = None


# --------------------------------------------------------------------------- error bodies


def _error_or_none(value: Any) -> Any:
    return value if isinstance(value, (str, dict)) else None


def _code(value: Any) -> Any:
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


class ErrorDetail(Wire):
    """The object form of ``error``: OpenAI, vLLM, Ollama's ``/v1`` and llama.cpp's server."""

    #: the human sentence
    message: Annotated[str | None, BeforeValidator(_text_if_any)] = None
    #: OpenAI: a machine code (``context_length_exceeded``), may be null; llama.cpp: the HTTP status
    code: Annotated[str | int | None, BeforeValidator(_code)] = None
    #: OpenAI: the error class; llama.cpp: the machine code (``exceed_context_size_error``)
    type: Annotated[str | None, BeforeValidator(_text_or_none)] = None
    #: llama.cpp's overflow: the slot's window
    n_ctx: _Count = None
    #: llama.cpp's overflow: the prompt's true size
    n_prompt_tokens: _Count = None


class ErrorReply(Wire):
    """An error body, whichever server shaped it (see ``backends.http.error_of``)."""

    #: Ollama: a string (since 0.30 possibly llama-server's JSON body as a string); others: an object
    error: Annotated[ErrorDetail | str | None, BeforeValidator(_error_or_none)] = None
    #: some proxies (LiteLLM, FastAPI) put the sentence at the top level
    message: Annotated[str | None, BeforeValidator(_text_or_none)] = None
