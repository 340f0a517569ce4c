"""Conformance cases: what batchd needs from an LLM server, run through batchd's own backends.

Each case is ``async def case(server: Server) -> None`` and runs against any
server: the emulator in each Ollama era (``tests/test_conformance.py``) and
real servers (the llama.cpp ``llama-server`` integration test adds itself as
another ``Server``). A case that does not apply to a server calls
``pytest.skip`` with the reason. Keep the cases free of emulator internals:
only HTTP, through ``OllamaBackend`` / ``OpenAIBackend``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from batchd.backends.base import Backend, ChatRequest
from batchd.backends.ollama import OllamaBackend
from batchd.backends.ollama_facts import parse_version
from batchd.backends.openai import OpenAIBackend
from batchd.errors import ContextLengthExceeded
from batchd.run.translate import to_chat_request


@dataclass(frozen=True)
class Server:
    """One server under test."""

    url: str
    #: the batchd backend that talks to it: ``ollama`` (``/api/chat``) or ``openai`` (``/v1``)
    kind: str
    model: str
    #: the window one request gets (Ollama: what batchd pins; llama-server: ``-c`` / ``-np``)
    num_ctx: int
    #: ``go`` / ``llamaserver`` (Ollama eras), ``llama.cpp`` (the real llama-server), ``vllm``
    flavour: str
    #: the server says the window and the prompt's size when a prompt does not fit
    overflow_has_numbers: bool = False

    def backend(self) -> Backend:
        if self.kind == "ollama":
            return OllamaBackend(url=self.url, timeout=60)
        return OpenAIBackend(url=self.url, timeout=60)

    def request(self, text: str, *, num_predict: int = 8, **body: object) -> ChatRequest:
        chat = to_chat_request(
            {
                "model": self.model,
                "max_tokens": num_predict,
                "temperature": 0,
                "seed": 1,
                "messages": [
                    {"role": "system", "content": "Answer in one short sentence."},
                    {"role": "user", "content": text},
                ],
                **body,
            },
            model=self.model,
            num_ctx=self.num_ctx,
        )
        return chat


Case = Callable[[Server], Coroutine[Any, Any, None]]
CASES: list[Case] = []


def case(fn: Case) -> Case:
    CASES.append(fn)
    return fn


async def _with(server: Server, fn: Callable[[Backend], Awaitable[None]]) -> None:
    backend = server.backend()
    try:
        await fn(backend)
    finally:
        await backend.aclose()


@case
async def answers_with_token_counts(server: Server) -> None:
    async def go(b: Backend) -> None:
        await b.ping()
        result = await b.chat(server.request("Name one colour."))
        assert result.content.strip()
        assert result.prompt_tokens > 0 and 0 < result.completion_tokens <= 8
        assert result.finish_reason in ("stop", "length")

    await _with(server, go)


@case
async def overflow_is_context_length_exceeded(server: Server) -> None:
    async def go(b: Backend) -> None:
        text = "word " * (server.num_ctx * 2)  # about two tokens per window slot whatever the tokenizer
        with pytest.raises(ContextLengthExceeded) as info:
            await b.chat(server.request(text))
        exc = info.value
        assert exc.message and not exc.message.lstrip().startswith("{")  # the human text, not a blob
        if server.overflow_has_numbers:
            assert exc.n_ctx == server.num_ctx
            assert exc.n_prompt_tokens is not None and exc.n_prompt_tokens > server.num_ctx
        else:
            assert exc.n_ctx is None and exc.n_prompt_tokens is None

    await _with(server, go)


@case
async def length_only_when_num_predict_was_hit(server: Server) -> None:
    async def go(b: Backend) -> None:
        cut = await b.chat(server.request("Write a long story about a cat.", num_predict=2))
        assert cut.finish_reason == "length" and cut.completion_tokens == 2

    await _with(server, go)


@case
async def a_string_stop_is_accepted(server: Server) -> None:
    async def go(b: Backend) -> None:  # Ollama answers 500 to a string stop: batchd must send a list
        result = await b.chat(server.request("Name one colour.", stop="\n\n"))
        assert result.content is not None

    await _with(server, go)


@case
async def queued_requests_all_answer(server: Server) -> None:
    async def go(b: Backend) -> None:  # more requests than slots: the rest queue, none fails
        results = await asyncio.gather(*(b.chat(server.request(f"Say the number {i}.")) for i in range(5)))
        assert all(r.completion_tokens > 0 for r in results)

    await _with(server, go)


@case
async def version_is_a_release(server: Server) -> None:
    if server.kind != "ollama":
        pytest.skip("only Ollama has /api/version")

    async def go(b: Backend) -> None:
        assert isinstance(b, OllamaBackend)
        version = parse_version(await b.version())
        assert version is not None and version >= (0, 12, 6)

    await _with(server, go)


@case
async def a_different_num_ctx_reloads_the_model(server: Server) -> None:
    if server.kind != "ollama":
        pytest.skip("only Ollama loads a runner per num_ctx")

    async def go(b: Backend) -> None:
        assert isinstance(b, OllamaBackend)
        await b.chat(server.request("Name one colour."))
        warm = await b.chat(server.request("Name one fruit."))
        other = ChatRequest(
            model=server.model,
            num_ctx=server.num_ctx // 2,
            messages=[{"role": "user", "content": "Name one animal."}],
            options={"num_predict": 4},
        )
        reloaded = await b.chat(other)
        assert warm.load_seconds is not None and reloaded.load_seconds is not None
        assert reloaded.load_seconds > 5 * warm.load_seconds
        loaded = await b.loaded()
        assert [m.context_length for m in loaded if m.name == server.model] == [server.num_ctx // 2]

    await _with(server, go)


async def post(server: Server, path: str, body: dict[str, object]) -> httpx.Response:
    """A raw call, for cases about what the server itself answers."""
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        return await client.post(path, json=body)


@case
async def the_server_refuses_a_string_stop_as_ollama_does(server: Server) -> None:
    if server.kind != "ollama":
        pytest.skip("OpenAI-compatible servers accept a string stop")
    resp = await post(
        server,
        "/api/chat",
        {
            "model": server.model,
            "stream": False,
            "options": {"stop": "\n"},
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert resp.status_code == 500 and resp.json() == {"error": 'option "stop" must be of type array'}
