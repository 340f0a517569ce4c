"""A model's reply read as JSON: the fence-tolerant parse and the number a score may be.

Shared by ``run.replies`` (is the reply acceptable?) and ``publish.scores`` (what goes into
``scores.csv``), so the two read a reply the same way.
"""

from __future__ import annotations

from typing import Any

import orjson


def parse_json_reply(content: str) -> Any:
    """The reply as JSON, tolerating a ```json fence around it; raises ValueError."""
    text = content.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"reply is not JSON: {exc}") from exc


def as_number(value: Any) -> float | int | None:
    """A JSON value as a score: numbers and numeric strings; never booleans."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return None
        if f != f or f in (float("inf"), float("-inf")):
            return None
        return int(f) if f.is_integer() else f
    return None
