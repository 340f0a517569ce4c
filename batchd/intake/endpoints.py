"""The endpoints a batch line may name (its ``url``) and what each one's body must hold.

A dropped JSONL may mix them; a batch made through the API names one, and a line for
another is that line's error (as OpenAI does). Chat bodies are checked by
``ingest.check_messages``/``check_tools``; the others here. A bad body is a
``(code, message)`` for that line alone.
"""

from __future__ import annotations

import binascii
from enum import Enum
from typing import Any


class Endpoint(str, Enum):
    CHAT = "/v1/chat/completions"
    EMBEDDINGS = "/v1/embeddings"
    RESPONSES = "/v1/responses"
    COMPLETIONS = "/v1/completions"


#: the journal stores None for chat (every line before version 7 was one)
def stored(url: str) -> str | None:
    return None if url == Endpoint.CHAT.value else url


def endpoint_of(url: str | None) -> Endpoint:
    return Endpoint(url or Endpoint.CHAT.value)


ENCODINGS = ("float", "base64")
#: OpenAI's own cap on inputs in one embeddings request
MAX_INPUTS = 2048


def check_embedding(body: dict[str, Any]) -> str | None:
    """``input`` a non-empty string or a list of them; ``encoding_format``, ``dimensions`` well formed."""
    given = body.get("input")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not inputs:
        return "body.input must be a string or a non-empty list of strings"
    if len(inputs) > MAX_INPUTS:
        return f"body.input has {len(inputs)} items; at most {MAX_INPUTS} in one request"
    for i, text in enumerate(inputs):
        if not isinstance(text, str) or not text:
            return f"body.input[{i}] must be a non-empty string (token arrays are not supported)"
    if body.get("encoding_format", "float") not in ENCODINGS:
        return f"body.encoding_format must be one of {list(ENCODINGS)}"
    dims = body.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        return "body.dimensions must be a positive integer"
    return None


def embedding_inputs(body: dict[str, Any]) -> list[str]:
    """A checked embeddings body's inputs as a list (a string input is one)."""
    given = body["input"]
    return [given] if isinstance(given, str) else list(given)


_ITEM_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text", "text")
#: Responses and completions keys a local server cannot honour in a batch: refused, never dropped
_RESPONSES_REFUSED = ("tools", "previous_response_id", "background", "stream", "conversation")
_COMPLETIONS_REFUSED = ("stream", "echo", "suffix", "logprobs", "best_of")


def check_responses(body: dict[str, Any]) -> str | None:
    """``input`` (a string, or message items with text content), ``instructions``, ``text.format``,
    ``max_output_tokens``, ``reasoning.effort``; anything needing server-side state is refused."""
    for key in _RESPONSES_REFUSED:
        if body.get(key) not in (None, False, []):
            return f"body.{key} is not supported for /v1/responses in a batch"
    given = body.get("input")
    if isinstance(given, str):
        if not given:
            return "body.input must not be empty"
    elif isinstance(given, list) and given:
        for i, item in enumerate(given):
            if not isinstance(item, dict) or item.get("type", "message") != "message":
                return f"body.input[{i}] must be a message item (role and content)"
            if item.get("role") not in _ITEM_ROLES:
                return f"body.input[{i}].role must be one of {list(_ITEM_ROLES)}"
            content = item.get("content")
            if isinstance(content, list):
                if not all(
                    isinstance(p, dict) and p.get("type") in _TEXT_PARTS and isinstance(p.get("text"), str)
                    for p in content
                ):
                    return f"body.input[{i}].content: only text parts are supported"
            elif not isinstance(content, str):
                return f"body.input[{i}].content must be a string or a list of text parts"
    else:
        return "body.input must be a string or a non-empty list of message items"
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        return "body.instructions must be a string"
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text") or {}, dict) else None
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema")):
        return "body.text.format.type must be text, json_object or json_schema"
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and not isinstance(fmt.get("schema"), dict):
        return "body.text.format.schema must be a JSON schema object"
    return _positive(body, "max_output_tokens")


def check_completions(body: dict[str, Any]) -> str | None:
    """``prompt``: one string (a list of one is taken; more would be several completions: refused)."""
    for key in _COMPLETIONS_REFUSED:
        if body.get(key) not in (None, False, 0, ""):
            return f"body.{key} is not supported for /v1/completions in a batch"
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        return "body.prompt must be one non-empty string"
    if body.get("n") not in (None, 1):
        return "body.n is not supported in a batch"
    return _positive(body, "max_tokens")


def _positive(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        return f"body.{key} must be a positive integer"
    return None


#: each non-chat endpoint's body check
CHECKS = {
    Endpoint.EMBEDDINGS: check_embedding,
    Endpoint.RESPONSES: check_responses,
    Endpoint.COMPLETIONS: check_completions,
}


def check_image(image_url: Any, max_bytes: int) -> str | None:
    """An ``image_url`` part's image: a base64 ``data:image/...`` URI (batchd fetches nothing) of at most
    ``max_bytes`` decoded (``limits.max_image_bytes``)."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url[:100]:
        return "only data:image/...;base64, URIs are supported (batchd does not fetch URLs)"
    data = url.partition(";base64,")[2]
    size = len(data) * 3 // 4 - data[-2:].count("=")
    if size > max_bytes:
        return f"image of {size:,} bytes is over limits.max_image_bytes ({max_bytes:,})"
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error as exc:
        return f"image is not valid base64 ({exc})"
    return None
