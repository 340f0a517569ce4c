"""Scores: pull the score (and schema fields) out of a reply, and write safe CSV cells.

With a JSON schema the reply is JSON by construction; without one a tolerant
extractor finds ``score: 7``, ``7/10``, ``Score - 7``. Cells that a spreadsheet
would run as a formula are prefixed with ``'``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_SCORE_PATTERNS = (
    re.compile(r"\bscore\b\s*(?:is|of|=|:|-|–|—)?\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"(-?\d+(?:\.\d+)?)\s*/\s*10\b"),
    re.compile(r"(-?\d+(?:\.\d+)?)\s+out of\s+10\b", re.IGNORECASE),
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


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


def extract_score(content: str, field: str = "score") -> float | int | None:
    """A score from a JSON reply's field, else from free text; None when there is none."""
    try:
        data = parse_json_reply(content)
    except ValueError:
        data = None
    if isinstance(data, dict):
        value = data.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _number(value)
    for pattern in _SCORE_PATTERNS:
        m = pattern.search(content)
        if m:
            return _number(m.group(1))
    return None


def _number(text: str) -> float | int | None:
    try:
        f = float(text)
    except ValueError:
        return None
    return int(f) if f.is_integer() else f


def safe_cell(value: Any) -> str:
    """A CSV cell that Excel and LibreOffice show as text, never run as a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        text = "; ".join(str(v) for v in value)
    elif isinstance(value, dict):
        text = orjson.dumps(value).decode()
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def schema_fields(fmt: Any) -> list[str]:
    if isinstance(fmt, dict):
        props = fmt.get("properties")
        if isinstance(props, dict):
            return list(props)
    return []
