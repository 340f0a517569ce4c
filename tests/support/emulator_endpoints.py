"""The emulator's endpoints beyond chat text: capabilities, tool calls (stdlib only).

Written from Ollama's source (``api/types.go`` ``Message``/``ToolCall``, ``server/routes.go``
``ChatHandler``, ``server/images.go`` ``CheckCapabilities``, ``openai/openai.go``
``ToChatCompletion``), not from batchd's code, so it stays an independent oracle.

Capabilities: each model has Ollama's list (``completion``, ``tools``, ``vision``, ``embedding``);
a name with ``embed`` in it is an embedding model only, anything else completes, calls tools and
sees images. A request needing one the model lacks is a 400 ``<model> does not support <cap>``.

Tool calls, deterministically: a request with ``tools`` whose last message is the user's calls
one tool (the one named by a ``<<TOOL:name>>`` marker in that message, else the first), with
arguments drawn from its JSON schema; after a ``tool`` message the model answers in text.
Ollama's ``/api/chat`` gives the arguments as an object and ``done_reason: "stop"``; its ``/v1``
gives them as a JSON string with ``finish_reason: "tool_calls"``.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from typing import Any

from tests.support.emulator_model import _value

_rng = random.Random(20)


def capabilities_for(models: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Each model's capabilities as ``/api/show`` lists them."""
    return {m: ("embedding",) if "embed" in m else ("completion", "tools", "vision") for m in models}


def missing(caps: tuple[str, ...], body: dict[str, Any]) -> str | None:
    """The first capability a chat request needs and the model lacks (``CheckCapabilities``), or None."""
    need = ["completion"]
    if body.get("tools"):
        need.append("tools")
    for cap in need:
        if cap not in caps:
            return cap
    return None


def refusal(model: str, cap: str) -> str:
    """Ollama's sentence (``scheduleRunner``: ``"%s %w"`` of the model name and ``does not support``)."""
    return f"{model} does not support {cap}"


def tool_calls(body: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls the model makes, in Ollama's shape (``arguments`` an object); [] for a text answer."""
    tools = [t.get("function") or {} for t in body.get("tools") or [] if isinstance(t, dict)]
    if not tools or not messages or messages[-1].get("role") != "user":
        return []
    last = messages[-1].get("content")
    text = last if isinstance(last, str) else json.dumps(last)
    chosen = tools[0]
    if "<<TOOL:" in text:
        name = text.split("<<TOOL:", 1)[1].split(">>", 1)[0]
        chosen = next((t for t in tools if t.get("name") == name), chosen)
    schema = chosen.get("parameters") or {"type": "object", "properties": {}}
    h = hashlib.sha256(text.encode()).digest()
    arguments = _value(schema, h, schema)
    ident = "call_" + "".join(_rng.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    return [{"id": ident, "function": {"index": 0, "name": chosen.get("name", ""), "arguments": arguments}}]


def ollama_message(content: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """``message`` of an ``/api/chat`` reply."""
    if not calls:
        return {"role": "assistant", "content": content}
    return {"role": "assistant", "content": "", "tool_calls": calls}


def openai_choice(content: str, reason: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """``choices[0]`` of a ``/v1/chat/completions`` reply (``ToChatCompletion``)."""
    if not calls:
        return {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": reason}
    converted = [
        {
            "id": c["id"],
            "index": c["function"]["index"],
            "type": "function",
            "function": {"name": c["function"]["name"], "arguments": json.dumps(c["function"]["arguments"])},
        }
        for c in calls
    ]
    return {
        "index": 0,
        "message": {"role": "assistant", "content": "", "tool_calls": converted},
        "finish_reason": "tool_calls" if reason == "stop" else reason,
    }
