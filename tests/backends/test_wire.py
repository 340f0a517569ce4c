"""The typed replies parse what the real servers send, and tell a missing counter from a zero."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pydantic import ValidationError

from batchd.backends.base import ChatRequest
from batchd.backends.http import ErrorBody, error_of
from batchd.backends.ollama import OllamaBackend
from batchd.backends.openai import OpenAIBackend
from batchd.backends.wire import (
    ChatCompletion,
    OllamaChatResponse,
    OllamaPsResponse,
    OllamaShowResponse,
    OpenAIModelList,
)
from batchd.errors import BackendServerError

# A /api/chat reply as Ollama 0.33 sends it (api/types.go ChatResponse + Metrics), one unknown field added.
OLLAMA_CHAT = {
    "model": "gemma3:4b",
    "created_at": "2026-11-28T10:00:00Z",
    "message": {"role": "assistant", "content": '{"score": 7}'},
    "done": True,
    "done_reason": "stop",
    "total_duration": 5_000_000,
    "load_duration": 1_000,
    "prompt_eval_count": 120,
    "prompt_eval_cached_count": 100,
    "prompt_eval_duration": 10,
    "eval_count": 6,
    "eval_duration": 20,
    "some_future_field": [1, 2],
}


def test_ollama_chat_reply_reads_as_attributes() -> None:
    r = OllamaChatResponse.model_validate(OLLAMA_CHAT)
    assert (r.message.content, r.done_reason, r.prompt_eval_count, r.prompt_eval_cached_count, r.eval_count) == (
        '{"score": 7}',
        "stop",
        120,
        100,
        6,
    )


def test_a_missing_counter_is_none_not_zero() -> None:
    # Older servers omit prompt_eval_count on a full cache hit: "unknown" must stay distinguishable from 0.
    r = OllamaChatResponse.model_validate({"message": {"content": "ok"}, "done": True})
    assert r.prompt_eval_count is None and r.done_reason is None and r.load_duration is None


def test_a_reply_without_message_content_is_refused() -> None:
    with pytest.raises(ValidationError):
        OllamaChatResponse.model_validate({"done": True})


def test_show_and_ps() -> None:
    show = OllamaShowResponse.model_validate(
        {"model_info": {"general.architecture": "gemma3", "gemma3.context_length": 131072}}
    )
    assert show.context_length() == 131072
    assert OllamaShowResponse.model_validate({}).context_length() is None
    ps = OllamaPsResponse.model_validate(
        {"models": [{"name": "gemma3:4b", "size": 10, "size_vram": 8, "context_length": 8192}]}
    )
    assert ps.models[0].size_vram == 8 and ps.models[0].context_length == 8192


@pytest.mark.parametrize(
    ("body", "cached"),
    [
        ({"usage": {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 8}}}, 8),  # vLLM / OpenAI
        ({"usage": {"prompt_tokens": 10}, "timings": {"cache_n": 7, "prompt_n": 3}}, 7),  # llama.cpp server
        ({"usage": {"prompt_tokens": 10}}, None),  # Ollama's /v1: says nothing
    ],
)
def test_chat_completion_cached_tokens_from_either_field(body: dict[str, object], cached: int | None) -> None:
    c = ChatCompletion.model_validate({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}], **body})
    assert c.cached_tokens() == cached and c.choices[0].message.content == "x"


def test_model_list() -> None:
    models = OpenAIModelList.model_validate(
        {"data": [{"id": "m", "meta": {"n_ctx": 512, "n_ctx_train": 8192}}, {"id": "v", "max_model_len": 4096}]}
    )
    assert [m.id for m in models.data] == ["m", "v"]
    assert models.data[0].meta is not None and models.data[0].meta.n_ctx == 512
    assert [m.window() for m in models.data] == [512, 4096]


# --------------------------------------------------------------------------- the backends parse once, through these


def _ollama(routes: dict[str, object]) -> OllamaBackend:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=routes[req.url.path])

    return OllamaBackend(url="http://llm.test", transport=httpx.MockTransport(handler))


def _openai(routes: dict[str, object]) -> OpenAIBackend:
    return OpenAIBackend(
        url="http://llm.test", transport=httpx.MockTransport(lambda req: httpx.Response(200, json=routes[req.url.path]))
    )


REQUEST = ChatRequest(model="gemma3:4b", num_ctx=4096, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("reply", "field"),
    [
        ({"done": True}, "message"),
        ({"message": {"role": "assistant"}, "done": True}, "message.content"),
        ({"message": {"content": "ok"}, "eval_count": "many"}, "eval_count"),
    ],
)
def test_an_ollama_reply_that_does_not_validate_is_a_server_error_naming_the_field(reply: object, field: str) -> None:
    with pytest.raises(BackendServerError) as info:
        asyncio.run(_ollama({"/api/chat": reply}).chat(REQUEST))
    assert info.value.status_code == 502 and f"reply has no valid {field} " in info.value.message


@pytest.mark.parametrize(
    ("reply", "field"),
    [
        ({"choices": []}, "choices[0].message.content"),
        ({"choices": [{"message": {"content": None}}]}, "choices[0].message.content"),
        ({"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "lots"}}, "usage.prompt_tokens"),
    ],
)
def test_an_openai_reply_that_does_not_validate_is_a_server_error_naming_the_field(reply: object, field: str) -> None:
    with pytest.raises(BackendServerError) as info:
        asyncio.run(_openai({"/v1/chat/completions": reply}).chat(REQUEST))
    assert info.value.status_code == 502 and f"reply has no valid {field} " in info.value.message


def test_ollama_reply_fields_reach_the_result() -> None:
    result = asyncio.run(_ollama({"/api/chat": OLLAMA_CHAT}).chat(REQUEST))
    assert (
        result.content,
        result.finish_reason,
        result.prompt_tokens,
        result.completion_tokens,
        result.model,
        result.load_seconds,
    ) == ('{"score": 7}', "stop", 120, 6, "gemma3:4b", 1e-6)
    bare = asyncio.run(_ollama({"/api/chat": {"message": {"content": "ok"}, "done_reason": "length"}}).chat(REQUEST))
    assert (bare.prompt_tokens, bare.completion_tokens, bare.model, bare.load_seconds, bare.finish_reason) == (
        0,
        0,
        "gemma3:4b",
        None,
        "length",
    )


def test_ollama_ps_show_and_version_through_the_backend() -> None:
    backend = _ollama(
        {
            "/api/ps": {
                "models": [
                    {"model": "qwen3:8b", "size": 10, "size_vram": 8, "context_length": 8192},
                    {"name": "gemma3:4b", "model": "gemma3:4b", "size": 4, "size_vram": 4},
                ]
            },
            "/api/show": {
                "model_info": {"general.architecture": "qwen3", "qwen3.context_length": 40960},
                "capabilities": ["completion"],
            },
            "/api/version": {"version": "0.33.0"},
        }
    )
    loaded = asyncio.run(backend.loaded())
    assert [(m.name, m.size, m.size_vram, m.context_length) for m in loaded] == [
        ("qwen3:8b", 10, 8, 8192),
        ("gemma3:4b", 4, 4, None),
    ]
    assert asyncio.run(backend.context_length("qwen3:8b")) == 40960
    assert asyncio.run(backend.version()) == "0.33.0"


def test_null_lists_from_go_servers_read_as_empty() -> None:
    # Go marshals a nil slice or map as null.
    backend = _ollama({"/api/ps": {"models": None}, "/api/show": {"model_info": None, "capabilities": None}})
    assert asyncio.run(backend.loaded()) == []
    assert asyncio.run(backend.context_length("m")) is None


def test_a_version_reply_without_version_is_a_server_error() -> None:
    with pytest.raises(BackendServerError, match="version"):
        asyncio.run(_ollama({"/api/version": {"v": 1}}).version())


def test_openai_models_are_typed_entries_and_odd_listings_do_not_fail() -> None:
    backend = _openai(
        {
            "/v1/models": {
                "object": "list",
                "data": [
                    {"id": "a", "meta": None},
                    {"id": "b", "max_model_len": 0, "meta": {"n_ctx": 2048}},
                    {"object": "model"},
                ],
            }
        }
    )
    models = asyncio.run(backend.models())
    assert sorted(models) == ["a", "b"] and models["b"].window() == 2048 and models["a"].window() is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": "model 'x' not found"}, ErrorBody("model 'x' not found")),
        (
            {"error": {"message": "bad key", "code": "invalid_api_key", "type": "invalid_request_error"}},
            ErrorBody("bad key", "invalid_api_key"),
        ),
        (
            {
                "error": {
                    "message": "too long",
                    "code": 400,
                    "type": "exceed_context_size_error",
                    "n_ctx": 4096,
                    "n_prompt_tokens": 9000,
                }
            },
            ErrorBody("too long", "exceed_context_size_error", 4096, 9000),
        ),
        # odd shapes keep what is usable instead of failing: numbers that are not counts, a message that is no text
        ({"error": {"message": 5, "code": None, "n_ctx": "4096", "n_prompt_tokens": -1}}, ErrorBody("5")),
        ({"error": {"code": "oops"}}, ErrorBody("RAW", "oops")),
        ({"error": ["a"], "message": "proxy says no"}, ErrorBody("proxy says no")),
        ({"detail": "nope"}, ErrorBody("RAW")),
        (["not", "an", "object"], ErrorBody("RAW")),
    ],
)
def test_error_bodies_read_through_one_typed_model(body: object, expected: ErrorBody) -> None:
    assert error_of(body, "RAW") == expected


def test_the_ollama_backend_passes_prompt_eval_cached_count_on() -> None:
    """Newer Ollama reports the cached part beside the count; the conversation loop adds them up."""
    import asyncio

    import httpx

    from batchd.backends.base import ChatRequest
    from batchd.backends.ollama import OllamaBackend

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={**OLLAMA_CHAT, "prompt_eval_count": 20, "prompt_eval_cached_count": 100})

    async def go() -> tuple[int, int | None]:
        backend = OllamaBackend(url="http://ollama.test", transport=httpx.MockTransport(reply))
        try:
            r = await backend.chat(
                ChatRequest(model="gemma3:4b", num_ctx=2048, messages=[{"role": "user", "content": "hi"}])
            )
        finally:
            await backend.aclose()
        return r.prompt_tokens, r.cached_tokens

    assert asyncio.run(go()) == (20, 100)
