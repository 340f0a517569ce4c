"""Error bodies of the real servers, byte for byte, and what batchd makes of them.

The bodies are the ones Ollama and llama.cpp's server send today (read from
ollama/ollama v0.33: ``llm/llama_server.go`` wraps llama-server's own error body
as the *string* ``error`` of its reply; ``openai/openai.go`` ``NewError`` shapes
the ``/v1`` errors; ``llm/llama_server.go`` words the runner crashes).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from batchd.backends.base import ChatRequest
from batchd.backends.ollama import OllamaBackend
from batchd.backends.openai import OpenAIBackend
from batchd.errors import BackendOutOfMemory, BadRequest, ContextLengthExceeded, ModelNotFound

#: llama-server's own body (tools/server: ``format_error_response`` + n_prompt_tokens/n_ctx)
LLAMA_SERVER_OVERFLOW: dict[str, Any] = {
    "error": {
        "code": 400,
        "message": "request (9000 tokens) exceeds the available context size (4096 tokens), try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 9000,
        "n_ctx": 4096,
    }
}
#: Ollama >= 0.30.1: the same body as a JSON *string* in ``error``
OLLAMA_030_OVERFLOW = {"error": json.dumps(LLAMA_SERVER_OVERFLOW)}
#: Ollama <= 0.24 (Go runner) and the embedding path today
OLLAMA_GO_OVERFLOW = {"error": "the input length exceeds the context length"}

REQUEST = ChatRequest(model="gemma3:4b", num_ctx=4096, messages=[{"role": "user", "content": "hi"}])


def _ollama(status: int, body: Any) -> OllamaBackend:
    return OllamaBackend(
        url="http://llm.test", transport=httpx.MockTransport(lambda req: httpx.Response(status, json=body))
    )


def _openai(status: int, body: Any) -> OpenAIBackend:
    return OpenAIBackend(
        url="http://llm.test", transport=httpx.MockTransport(lambda req: httpx.Response(status, json=body))
    )


def _raised(backend: OllamaBackend | OpenAIBackend) -> Exception:
    with pytest.raises(Exception) as info:
        asyncio.run(backend.chat(REQUEST))
    return info.value


@pytest.mark.parametrize(
    "make",
    [lambda: _ollama(400, OLLAMA_030_OVERFLOW), lambda: _openai(400, LLAMA_SERVER_OVERFLOW)],
    ids=["ollama-0.30", "llama-server"],
)
def test_overflow_carries_window_and_true_prompt_tokens(make: Callable[[], Any]) -> None:
    exc = _raised(make())
    assert isinstance(exc, ContextLengthExceeded)
    assert exc.n_ctx == 4096 and exc.n_prompt_tokens == 9000
    # the human message, never the JSON blob (this is what errors.jsonl shows)
    assert exc.message == ("request (9000 tokens) exceeds the available context size (4096 tokens), try increasing it")
    assert "{" not in exc.message


def test_overflow_numbers_read_from_the_message_when_fields_are_missing() -> None:
    inner = {
        "error": {
            "code": 400,
            "type": "exceed_context_size_error",
            "message": "request (700 tokens) exceeds the available context size (512 tokens), try it",
        }
    }
    exc = _raised(_ollama(400, {"error": json.dumps(inner)}))
    assert isinstance(exc, ContextLengthExceeded)
    assert (exc.n_ctx, exc.n_prompt_tokens) == (512, 700)


def test_go_runner_overflow_has_no_numbers() -> None:
    exc = _raised(_ollama(400, OLLAMA_GO_OVERFLOW))
    assert isinstance(exc, ContextLengthExceeded)
    assert exc.n_ctx is None and exc.n_prompt_tokens is None
    assert exc.message == "the input length exceeds the context length"


def test_a_string_error_that_only_looks_like_json_stays_text() -> None:
    exc = _raised(_ollama(400, {"error": "{not json at all"}))
    assert isinstance(exc, BadRequest) and exc.message == "{not json at all"


@pytest.mark.parametrize(
    "text",
    [
        # llm/llama_server.go (Ollama >= 0.30)
        (
            "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, "
            "check ollama server logs for details"
        ),
        "llama-server process no longer running: exit status 2 ",
        # the Go runner's wording (<= 0.24)
        "llama runner process has terminated: exit status 2",
    ],
)
def test_runner_crash_texts_count_as_runner_crashes(text: str) -> None:
    exc = _raised(_ollama(500, {"error": text}))
    assert isinstance(exc, BackendOutOfMemory)  # transient: trim hard, back off, retry
    assert exc.message == text


def test_ollama_v1_error_shape_is_read_by_the_openai_backend() -> None:
    # openai/openai.go NewError: {"error": {"message", "type", "param": null, "code": null}}
    body = {
        "error": {
            "message": 'model "nope" not found, try pulling it first',
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }
    exc = _raised(_openai(404, body))
    assert isinstance(exc, ModelNotFound) and exc.message == body["error"]["message"]
    bad = {"error": {"message": "invalid temperature", "type": "invalid_request_error", "param": None, "code": None}}
    exc = _raised(_openai(400, bad))
    assert isinstance(exc, BadRequest) and exc.message == "invalid temperature"
    assert exc.code == "bad_request"  # "None" or "null" never becomes the code
