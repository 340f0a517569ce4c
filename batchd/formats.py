"""The one translation between OpenAI's ``response_format`` and Ollama's ``format``.

batchd keeps a reply format in one backend-neutral shape, ``Format``: a JSON
schema (a dict), the string ``"json"`` (any JSON object), or ``None`` (free
text). OpenAI-style bodies (request lines, a pipeline's shared prefix, the
``openai`` backend's calls) carry it as ``response_format``; Ollama takes it as
``format``, which is ``Format`` itself.
"""

from __future__ import annotations

from typing import Any

#: a JSON schema, "json" (any JSON object), or None (free text)
Format = dict[str, Any] | str | None


def from_response_format(response_format: Any) -> Format:
    """``Format`` of an OpenAI ``response_format`` (``json_schema`` without a schema reads as "json")."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) and schema else "json"
    if kind == "json_object":
        return "json"
    return None


def to_response_format(fmt: Format, *, name: str = "reply", strict: bool | None = None) -> dict[str, Any] | None:
    """The OpenAI ``response_format`` for ``fmt``; ``None`` for free text."""
    if fmt is None:
        return None
    if isinstance(fmt, dict):
        spec: dict[str, Any] = {"name": name, "schema": fmt}
        if strict is not None:
            spec["strict"] = strict
        return {"type": "json_schema", "json_schema": spec}
    return {"type": "json_object"}
