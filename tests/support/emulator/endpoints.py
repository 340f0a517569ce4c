"""The emulator's endpoints beyond chat text: capabilities, tool calls (stdlib only).

Written from Ollama's source (``api/types.go`` ``Message``/``ToolCall``, ``server/routes.go``
``ChatHandler``, ``server/images.go`` ``CheckCapabilities``, ``openai/openai.go``
``ToChatCompletion``), not from batchd's code, so it stays an independent oracle.

Capabilities: each model has Ollama's list (``completion``, ``tools``, ``vision``, ``embedding``);
a name with ``embed`` in it is an embedding model only, anything else completes, calls tools and
sees images. A request needing one the model lacks is a 400 ``<model> does not support <cap>``.

Routes (``ROUTES``, each ``(emulator, raw body, openai) -> (status, JSON bytes)``): ``/api/embed`` and
``/v1/embeddings``, ``/api/generate`` and ``/v1/completions``; the emulator's faults (``fail``), model
names and latency apply to them as to chat.

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

from tests.support.emulator.model import _value, reply_content, tokens

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


#: llama.cpp's server (Ollama's runner since 0.30) given images without a vision projector
NO_VISION = "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"


def image_refusal(caps: tuple[str, ...], messages: list[dict[str, Any]], openai: bool) -> tuple[int, str] | None:
    """Images to a model without ``vision``: Ollama's ``/api/chat`` does not check (``ChatHandler`` asks
    only completion/tools), its runner fails the call (500); an OpenAI-style server refuses it (400)."""
    if "vision" in caps:
        return None
    for m in messages:
        parts = m.get("content") if isinstance(m.get("content"), list) else []
        if m.get("images") or any(isinstance(p, dict) and p.get("type") == "image_url" for p in parts):
            return (400 if openai else 500), NO_VISION
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


# -- embeddings (server/routes.go EmbedHandler, openai/openai.go for /v1/embeddings) ----------------

#: the dimensions every emulated embedding model gives (nomic-embed-text's)
EMBED_DIMS = 768
_BASES: dict[int, list[str]] = {}


def _bases(dims: int) -> list[str]:
    """256 unit vectors as JSON text (less their first element): a reply is joined, not formatted, so a
    0 ms emulator serves thousands of vectors a second."""
    if dims not in _BASES:
        rng = random.Random(dims)
        rows = []
        for _ in range(256):
            v = [rng.uniform(-1, 1) for _ in range(dims - 1)]
            norm = sum(x * x for x in v) ** 0.5
            rows.append(",".join(f"{x / norm * 0.99:.7f}" for x in v))
        _BASES[dims] = rows
    return _BASES[dims]


def vector(text: str, dims: int = EMBED_DIMS) -> list[float]:
    """The emulated embedding of ``text`` (what tests compare against)."""
    return [float(x) for x in json.loads(_vector_json(text, dims))]


def _vector_json(text: str, dims: int) -> str:
    h = hashlib.sha256(text.encode()).digest()
    head = (h[1] * 256 + h[2]) / 65536 * 0.14 - 0.07  # tells inputs apart beyond the 256 bases
    return f"[{head:.7f},{_bases(dims)[h[0]]}]"


def _cut(text: str, dims: int) -> str:
    """``dimensions``: the first ``dims`` values, renormalised (``normalize(embedding[:req.Dimensions])``)."""
    v = vector(text, EMBED_DIMS)[:dims]
    norm = max(sum(x * x for x in v) ** 0.5, 1e-12)
    return json.dumps([x / norm for x in v])


def embed_inputs(body: dict[str, Any]) -> list[str] | None:
    """``input`` as Ollama reads it: a string (empty: none) or a list of strings; None: "invalid input type"."""
    given = body.get("input")
    if isinstance(given, str):
        return [given] if given else []
    if isinstance(given, list) and all(isinstance(t, str) for t in given):
        return list(given)
    return [] if given is None else None


def embed_reply(
    body: dict[str, Any], inputs: list[str], context_length: int, tokens: Any, openai: bool
) -> tuple[int, bytes]:
    """Status and JSON body of an ``/api/embed`` (or ``/v1/embeddings``) reply for a known embedding model.

    ``truncate: false`` and an input over the window: 400 "the input length exceeds the context length"
    (the ``/v1`` layer never sets truncate, so Ollama truncates there)."""
    counts = [tokens(t) for t in inputs]
    if body.get("truncate") is False and any(n > context_length for n in counts):
        return 400, json.dumps({"error": "the input length exceeds the context length"}).encode()
    dims = body.get("dimensions")
    rows = [
        _cut(t, dims) if isinstance(dims, int) and 0 < dims < EMBED_DIMS else _vector_json(t, EMBED_DIMS)
        for t in inputs
    ]
    model = body.get("model")
    if not openai:
        head = json.dumps(
            {"model": model, "total_duration": 1000, "load_duration": 100, "prompt_eval_count": sum(counts)}
        )
        return 200, (head[:-1] + ',"embeddings":[' + ",".join(rows) + "]}").encode()
    if body.get("encoding_format") == "base64":
        import base64
        import struct

        rows = ['"' + base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() + '"' for v in map(json.loads, rows)]
    data = ",".join(f'{{"object":"embedding","embedding":{r},"index":{i}}}' for i, r in enumerate(rows))
    usage = {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
    return 200, (
        f'{{"object":"list","data":[{data}],"model":{json.dumps(model)},"usage":{json.dumps(usage)}}}'
    ).encode()


# -- completions (server/routes.go GenerateHandler; openai/openai.go ToCompletion for /v1/completions) --


def generate_reply(body: dict[str, Any], prompt: str, reply: str, tokens: Any, openai: bool) -> dict[str, Any]:
    """An ``/api/generate`` reply (``response``, ``done_reason``, counts) or Ollama's ``/v1/completions``
    one (``text_completion``); ``num_predict`` / ``max_tokens`` cut the text and say ``length``."""
    limit = (body.get("options") or {}).get("num_predict") if not openai else body.get("max_tokens")
    evals, reason = tokens(reply), "stop"
    if isinstance(limit, int) and 0 < limit < evals:
        reply, evals, reason = reply[: limit * 4], limit, "length"
    counted = tokens(prompt) + 4
    if not openai:
        return {
            "model": body.get("model"),
            "created_at": "2026-01-01T00:00:00Z",
            "response": reply,
            "done": True,
            "done_reason": reason,
            "total_duration": 1000,
            "load_duration": 100,
            "prompt_eval_count": counted,
            "eval_count": evals,
        }
    return {
        "id": "cmpl-" + hashlib.sha256(prompt.encode()).hexdigest()[:12],
        "object": "text_completion",
        "created": 0,
        "model": body.get("model"),
        "system_fingerprint": "fp_ollama",
        "choices": [{"text": reply, "index": 0, "finish_reason": reason}],
        "usage": {"prompt_tokens": counted, "completion_tokens": evals, "total_tokens": counted + evals},
    }


# -- the routes ---------------------------------------------------------------------------------


def _error(status: int, message: str, openai: bool) -> tuple[int, bytes]:
    """Ollama's ``{"error": "..."}``, or the OpenAI-style object its ``/v1`` layer sends."""
    if not openai:
        return status, json.dumps({"error": message}).encode()
    kind = "invalid_request_error" if status < 500 else "server_error"
    return status, json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()


def _arrive(emu: Any, raw: bytes, openai: bool) -> tuple[dict[str, Any], str, tuple[int, bytes] | None]:
    """The body, its model, and the answer when it goes no further (bad JSON, an injected failure, a
    model the server does not have)."""
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError
    except ValueError:
        return {}, "", _error(400, "invalid JSON body", openai)
    fault, model = emu._arrive(body), str(body.get("model") or "")
    if fault is not None and fault.kind == "fail":
        return body, model, _error(fault.status, emu.era.crash if fault.status == 500 else "error", openai)
    if model not in emu.models and f"{model}:latest" not in emu.models:
        return body, model, _error(404, f"model '{model}' not found", openai)
    return body, model, None


def embed_route(emu: Any, raw: bytes, openai: bool) -> tuple[int, bytes]:
    body, model, early = _arrive(emu, raw, openai)
    if early is not None:
        return early
    inputs = embed_inputs(body)
    if inputs is None:
        return _error(400, "invalid input type", openai)
    if "embedding" not in emu.capabilities.get(model, ()):
        return _error(400, refusal(model, "embedding"), openai)
    emu._work(emu.request_latency())
    return embed_reply(body, inputs, emu.context_length, tokens, openai)


def generate_route(emu: Any, raw: bytes, openai: bool) -> tuple[int, bytes]:
    body, model, early = _arrive(emu, raw, openai)
    if early is not None:
        return early
    if "completion" not in emu.capabilities.get(model, ()):
        return _error(400, f'"{model}" does not support generate', openai)
    prompt = str(body.get("prompt") or "")
    emu._work(emu.request_latency())
    reply = reply_content(prompt, body.get("format"))
    return 200, json.dumps(generate_reply(body, prompt, reply, tokens, openai)).encode()


ROUTES = {
    "/api/embed": embed_route,
    "/v1/embeddings": embed_route,
    "/api/generate": generate_route,
    "/v1/completions": generate_route,
}
