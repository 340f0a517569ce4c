"""The emulator's deterministic model: token counts, reply texts and what it says about a model (stdlib only).

A reply depends only on the *last user message* and the requested format, so
history trimming never changes an answer; a text costs ``ceil(len / 4)`` tokens
and each message 4 more (the chat template's markers).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

_PHRASES = (
    "Solid background.",
    "Clear writing.",
    "Relevant experience.",
    "Needs more detail.",
    "Strong references.",
    "Limited evidence.",
    "Good fit for the role.",
    "Unclear motivation.",
)


def tokens(text: str) -> int:
    """Tokens of one text: ``max(1, ceil(len / 4))``."""
    return max(1, -(-len(text) // 4))


def _text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def count_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens: each message costs ``tokens(content) + 4``."""
    return sum(tokens(_text(m.get("content"))) + 4 for m in messages)


def last_user_content(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return _text(m.get("content"))
    return ""


def reply_content(last_user: str, fmt: Any = None) -> str:
    """The reply text for a last user message and an Ollama ``format`` value."""
    if "<<GARBAGE>>" in last_user:
        return "not json at all"
    h = hashlib.sha256(last_user.encode()).digest()
    if isinstance(fmt, dict):
        return json.dumps(_value(fmt, h, fmt))
    if fmt == "json":
        return json.dumps({"score": 1 + h[0] % 10})
    return f"Score: {1 + h[0] % 10}/10. {_PHRASES[h[3] % len(_PHRASES)]}"


def _value(s: dict[str, Any], h: bytes, root: dict[str, Any], salt: int = 0, depth: int = 0) -> Any:
    """A value satisfying (the common subset of) JSON schema ``s``."""
    if depth > 10:
        return None
    if isinstance(s.get("$ref"), str):  # pydantic puts nested models in $defs
        target: Any = root
        for part in s["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if part else target
        s = target
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in s.get(key) or () if o.get("type") != "null"]
        if options:
            return _value(options[0], h, root, salt, depth + 1)
    if "const" in s:
        return s["const"]
    if s.get("enum"):
        return s["enum"][h[1] % len(s["enum"])]
    kind = s.get("type", "object" if "properties" in s else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = s.get("properties") or {}
        return {k: _value(v, h, root, i, depth + 1) for i, (k, v) in enumerate(props.items())}
    if kind in ("integer", "number"):
        lo = s.get("minimum", s.get("exclusiveMinimum", -1e18) + 1)
        hi = s.get("maximum", s.get("exclusiveMaximum", 1e18) - 1)
        return int(min(max(1 + h[0] % 10, lo), hi))
    if kind == "array":
        n = min(max(2, s.get("minItems", 0)), s.get("maxItems", 2**31))
        return [_value(s.get("items") or {}, h, root, salt + j, depth + 1) for j in range(n)]
    if kind == "boolean":
        return h[2] % 2 == 0
    if kind == "null":
        return None
    if s.get("examples"):  # a string the test chose (a hostile reply, say)
        return s["examples"][0]
    phrase = _PHRASES[(h[3] + salt) % len(_PHRASES)]
    return phrase.ljust(s.get("minLength", 0), ".")[: s.get("maxLength", len(phrase) + 999)]


def model_details(name: str) -> dict[str, Any]:
    """What /api/tags, /api/ps and /api/show say about a model: its family from the name, a 4B Q4_K_M GGUF."""
    family = name.split(":")[0].split(".")[0]
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": "4.3B",
        "quantization_level": "Q4_K_M",
    }


def model_digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()
