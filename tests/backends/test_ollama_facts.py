"""What batchd sends an Ollama: stop lists, keep_alive, think, no runner options; version notes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from batchd.backends.base import ChatRequest
from batchd.backends.ollama import OllamaBackend
from batchd.backends.ollama_facts import parse_version, strip_runner_options, version_notes
from batchd.config import Settings
from batchd.run.translate import to_chat_request


def _sent(backend_kw: dict[str, Any], request: ChatRequest) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(json.loads(req.content))
        return httpx.Response(
            200,
            json={
                "model": "m",
                "message": {"role": "assistant", "content": "ok"},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 3,
                "eval_count": 1,
                "load_duration": 2_500_000_000,
            },
        )

    backend = OllamaBackend(url="http://llm.test", transport=httpx.MockTransport(handler), **backend_kw)
    result = asyncio.run(backend.chat(request))
    assert result.load_seconds == 2.5
    return seen[0]


def _request(**kw: Any) -> ChatRequest:
    return ChatRequest(model="m", num_ctx=2048, messages=[{"role": "user", "content": "hi"}], **kw)


# -- item 1: a string stop ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"stop": "\n"},  # OpenAI allows one string
        {"options": {"stop": "\n"}},  # a JSONL line's native Ollama options
    ],
)
def test_a_string_stop_becomes_a_list(body: dict[str, Any]) -> None:
    chat = to_chat_request({"messages": [{"role": "user", "content": "x"}], **body}, model="m", num_ctx=1024)
    assert chat.options["stop"] == ["\n"]


def test_a_stop_list_stays_as_it_is() -> None:
    chat = to_chat_request({"messages": [], "stop": ["a", "b"]}, model="m", num_ctx=1024)
    assert chat.options["stop"] == ["a", "b"]


# -- item 5: think, keep_alive -------------------------------------------------------------------------


def test_think_is_off_unless_asked() -> None:
    assert _sent({}, _request())["think"] is False
    assert _sent({}, _request(think=True))["think"] is True
    assert _sent({}, _request(think="high"))["think"] == "high"


@pytest.mark.parametrize(
    ("body", "think"),
    [
        ({}, None),
        ({"think": True}, True),
        ({"reasoning_effort": "low"}, "low"),
        ({"reasoning_effort": "none"}, False),
        ({"options": {"think": True}}, True),  # a pipeline's options table
    ],
)
def test_think_is_read_from_the_request_or_pipeline(body: dict[str, Any], think: Any) -> None:
    chat = to_chat_request({"messages": [], **body}, model="m", num_ctx=1024)
    assert chat.think == think and "think" not in chat.options


# -- item 3: runner options ------------------------------------------------------------------------


def test_runner_options_are_stripped_and_named() -> None:
    options = {"temperature": 0, "num_gpu": 99, "num_batch": 512, "num_ctx": 999, "use_mmap": False, "stop": ["x"]}
    kept, dropped = strip_runner_options(options)
    assert kept == {"temperature": 0, "stop": ["x"]}
    assert dropped == ["num_batch", "num_ctx", "num_gpu", "use_mmap"]
    assert strip_runner_options({"seed": 1}) == ({"seed": 1}, [])


# -- item 4: versions ----------------------------------------------------------------------------------


def test_versions_parse_and_say_what_they_lack() -> None:
    assert parse_version("0.33.0") == (0, 33, 0)
    assert parse_version("v0.12.6-rc1") == (0, 12, 6)
    assert parse_version("0.0.0") is None and parse_version("dev") is None
    ((level, text),) = version_notes("0.12.0")
    assert level == "warning" and "truncate" in text and "silently" in text
    ((level, text),) = version_notes("0.30.0")
    assert level == "info" and "uncached" in text
    assert version_notes("0.12.6") == [] and version_notes("0.24.0") == [] and version_notes("0.33.0") == []


# -- doctor: version and OLLAMA_NUM_PARALLEL ------------------------------------------------------------


def test_doctor_says_extra_lanes_only_queue_on_a_default_ollama() -> None:
    from batchd.ops.doctor import _parallel

    check = _parallel(4, None)
    assert check.level == "WARN" and "default is 1" in check.what and "only queue" in check.what
    assert "OLLAMA_NUM_PARALLEL=4" in check.fix and "backend.lanes = 1" in check.fix
    check = _parallel(4, (2, "ollama.service"))
    assert check.level == "WARN" and "OLLAMA_NUM_PARALLEL=2 (ollama.service)" in check.what
    assert "backend.lanes = 2" in check.fix
    assert _parallel(4, (4, "environment")).level == "OK"
    assert _parallel(1, None).level == "OK"


def test_doctor_reads_the_version_and_warns_on_an_old_ollama(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchd.ops.checks import Check, Level
    from batchd.ops.doctor import _ollama
    from tests.support.emulator import Emulator

    monkeypatch.delenv("OLLAMA_NUM_PARALLEL", raising=False)
    with Emulator(version="0.12.0") as emu:
        settings = Settings(backend={"url": emu.url, "lanes": 2})
        backend = OllamaBackend(url=emu.url)
        checks = asyncio.run(_ollama(settings, backend))
        assert checks[0].level == "WARN" and "0.12.0 ignores truncate/shift" in checks[0].what
        assert checks[0].fix == "upgrade Ollama to 0.12.6 or later"
        emu.version = "0.30.0"
        version, _parallel_check = asyncio.run(_ollama(settings, OllamaBackend(url=emu.url)))
        assert version.level == "OK" and version.what.startswith("Ollama 0.30.0; ") and "uncached" in version.what
        emu.version = "0.33.0"
        assert asyncio.run(_ollama(settings, OllamaBackend(url=emu.url)))[0] == Check(Level.OK, "Ollama 0.33.0", "")


def test_doctor_warns_when_the_openai_backend_points_at_ollama() -> None:
    from batchd.ops.doctor import _ollama_behind_v1
    from tests.support.emulator import Emulator

    with Emulator() as emu:
        (check,) = asyncio.run(_ollama_behind_v1(emu.url))
    assert check.level == "WARN" and "silently" in check.what and "backend.kind = ollama" in check.fix
    assert asyncio.run(_ollama_behind_v1("http://127.0.0.1:9")) == []  # nothing listens: no opinion


def test_keep_alive_minus_one_is_sent_as_a_number() -> None:
    assert Settings(backend={"keep_alive": "-1"}).backend.keep_alive == -1
    assert _sent({"keep_alive": "-1"}, _request())["keep_alive"] == -1
