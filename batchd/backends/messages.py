"""Chat messages between OpenAI's shape (what batch lines and results use) and each server's: tool
calling and images.

Images: a backend-neutral message carries its images as ``data:`` URIs under ``images``; Ollama
takes the bare base64 there (``api/types.go`` ``Message.Images``), an OpenAI-compatible server
gets them back as ``image_url`` content parts after the text.

Tool calling:

OpenAI: ``tools`` and ``tool_choice`` in the body, an assistant message's ``tool_calls`` with
``arguments`` as a JSON string, a ``tool`` message answering by ``tool_call_id``. Ollama
(``api/types.go`` ``Message``/``ToolCall``): ``arguments`` an object, a ``tool`` message names
its function in ``tool_name`` (its ``/v1`` layer looks the name up from the id the same way,
``openai/openai.go`` ``nameFromToolCallID``), and no ``tool_choice`` at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from batchd.backends.wire import OllamaToolCall, OpenAIToolCall
from batchd.errors import BadRequest, Unsupported


def ollama_tools(tools: list[dict[str, Any]] | None, tool_choice: Any) -> list[dict[str, Any]] | None:
    """The ``tools`` to send Ollama, or None. ``tool_choice`` ``none`` sends none (what OpenAI means by it);
    ``auto`` is Ollama's only behaviour; a forced choice cannot be honoured, so the line fails."""
    if not tools or tool_choice == "none":
        return None
    if tool_choice not in (None, "auto"):
        raise Unsupported(
            f"tool_choice {orjson.dumps(tool_choice).decode()} cannot be honoured by Ollama's /api/chat "
            '(it has no tool_choice; only "auto" and "none" work there)'
        )
    return tools


def has_images(messages: Sequence[dict[str, Any]]) -> bool:
    return any(m.get("images") for m in messages)


def ollama_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-shaped messages as Ollama's: tool call arguments as objects, tool results named, images bare."""
    if not any("tool_calls" in m or m.get("role") == "tool" or m.get("images") for m in messages):
        return list(messages)
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        m = dict(m)
        calls = m.pop("tool_calls", None)
        if calls:
            m["tool_calls"] = [_ollama_call(c, i, names) for i, c in enumerate(calls)]
        if m.get("images"):
            m["images"] = [url.partition(";base64,")[2] for url in m["images"]]
        if m.get("role") == "tool":
            name = m.pop("name", None) or names.get(str(m.get("tool_call_id")))
            if name:
                m["tool_name"] = name
        out.append(m)
    return out


def _ollama_call(call: dict[str, Any], index: int, names: dict[str, str]) -> dict[str, Any]:
    function = call.get("function") or {}
    name = str(function.get("name") or "")
    raw = function.get("arguments")
    try:
        arguments = orjson.loads(raw) if isinstance(raw, str) and raw.strip() else (raw or {})
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"tool call {name!r}: arguments are not JSON ({exc})") from exc
    if call.get("id"):
        names[str(call["id"])] = name
    ollama: dict[str, Any] = {"function": {"index": index, "name": name, "arguments": arguments}}
    if call.get("id"):
        ollama["id"] = call["id"]
    return ollama


def openai_calls(calls: Sequence[OllamaToolCall], custom_id: str) -> tuple[dict[str, Any], ...]:
    """Ollama's tool calls as OpenAI's; a call without an id (older servers) gets one derived from the line."""
    out = []
    for i, call in enumerate(calls):
        ident = call.id or "call_" + hashlib.sha256(f"{custom_id}\0{i}".encode()).hexdigest()[:8]
        arguments = orjson.dumps(call.function.arguments).decode()
        out.append({"id": ident, "type": "function", "function": {"name": call.function.name, "arguments": arguments}})
    return tuple(out)


def passed_calls(calls: Sequence[OpenAIToolCall]) -> tuple[dict[str, Any], ...]:
    """An OpenAI-compatible server's tool calls, kept in OpenAI's shape."""
    return tuple(
        {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in calls
    )


def openai_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for an OpenAI-compatible server: images back as ``image_url`` parts after the text."""
    if not has_images(messages):
        return list(messages)
    out = []
    for m in messages:
        m = dict(m)
        images = m.pop("images", None)
        if images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": m.get("content") or ""}] if m.get("content") else []
            m["content"] = parts + [{"type": "image_url", "image_url": {"url": url}} for url in images]
        out.append(m)
    return out
