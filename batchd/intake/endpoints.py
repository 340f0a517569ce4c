"""The endpoints a batch line may name (its ``url``) and what each one's body must hold.

A dropped JSONL may mix them; a batch made through the API names one, and a line for
another is that line's error (as OpenAI does). Chat bodies are checked by
``ingest.check_messages``/``check_tools``; the others here. A bad body is a
``(code, message)`` for that line alone.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Endpoint(str, Enum):
    CHAT = "/v1/chat/completions"
    EMBEDDINGS = "/v1/embeddings"


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
