"""Tool calling end to end: ``tools`` and ``tool_choice`` reach the server, tool calls come back as OpenAI's."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion

from batchd.config import Settings
from tests.support.emulator import Emulator
from tests.support.factories import Folders, read_jsonl
from tests.support.running import run_daemon_once

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city"],
        },
    },
}


def _line(cid: str, messages: list[dict[str, Any]], **body: Any) -> bytes:
    return (
        orjson.dumps(
            {
                "custom_id": cid,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gemma3:4b", "messages": messages, **body},
            }
        )
        + b"\n"
    )


def _results(folders: Folders, name: str) -> dict[str, dict[str, Any]]:
    return {r["custom_id"]: r for r in read_jsonl(folders.outbox / name / "results.jsonl")}


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_a_line_with_tools_gets_the_tool_call_back_as_openai_returns_it(
    kind: str, folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
    called = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
        ],
    }
    answered = [*ask, called, {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp_c": 4}'}]
    (folders.inbox / "tools.jsonl").write_bytes(
        _line("ask", ask, tools=[WEATHER], tool_choice="auto") + _line("answered", answered, tools=[WEATHER])
    )
    run_daemon_once(make_settings(backend={"kind": kind}, context={"mode": "isolated"}))
    results = _results(folders, "tools")
    assert set(results) == {"ask", "answered"}, read_jsonl(folders.outbox / "tools" / "errors.jsonl")
    asked = ChatCompletion.model_validate(results["ask"]["response"]["body"])
    choice = asked.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function" and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments, str)
    assert "city" in json.loads(calls[0].function.arguments)
    # the tools reached the server in its own shape; the tool result came back to it
    sent = [c for c in emulator.calls if "tools" in c]
    assert len(sent) == 2 and all(c["tools"][0]["function"]["name"] == "get_weather" for c in sent)
    second = sent[1]["messages"]
    assert second[-1]["role"] == "tool" and second[-1]["content"] == '{"temp_c": 4}'
    if kind == "ollama":  # Ollama's own shape: arguments an object, the tool named
        assert second[-2]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
        assert second[-1]["tool_name"] == "get_weather"
    else:
        assert second[-2]["tool_calls"][0]["function"]["arguments"] == '{"city":"Oslo"}'
        assert second[-1]["tool_call_id"] == "call_abc"
    final = ChatCompletion.model_validate(results["answered"]["response"]["body"])
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content
    assert not final.choices[0].message.tool_calls


def test_a_model_without_tools_fails_the_line_with_the_servers_reason(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    emulator.capabilities["gemma3:4b"] = ("completion",)
    (folders.inbox / "notools.jsonl").write_bytes(
        _line("t", [{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER])
        + _line("plain", [{"role": "user", "content": "Hello"}])
    )
    run_daemon_once(make_settings(context={"mode": "isolated"}))
    assert set(_results(folders, "notools")) == {"plain"}
    (error,) = read_jsonl(folders.outbox / "notools" / "errors.jsonl")
    assert error["custom_id"] == "t"
    assert "does not support tools" in error["response"]["body"]["error"]["message"]


def test_tool_choice_none_sends_no_tools_and_a_forced_choice_fails_clearly_on_ollama(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    ask = [{"role": "user", "content": "Weather in Oslo?"}]
    forced = {"type": "function", "function": {"name": "get_weather"}}
    (folders.inbox / "choice.jsonl").write_bytes(
        _line("none", ask, tools=[WEATHER], tool_choice="none")
        + _line("forced", ask, tools=[WEATHER], tool_choice=forced)
    )
    run_daemon_once(make_settings(context={"mode": "isolated"}))
    results = _results(folders, "choice")
    assert set(results) == {"none"}
    assert ChatCompletion.model_validate(results["none"]["response"]["body"]).choices[0].finish_reason == "stop"
    assert all("tools" not in c for c in emulator.calls)
    (error,) = read_jsonl(folders.outbox / "choice" / "errors.jsonl")
    assert error["custom_id"] == "forced" and error["error"]["code"] == "unsupported"
    assert "tool_choice" in error["error"]["message"]
