"""The one translation between OpenAI ``response_format`` and Ollama ``format``, both ways."""

from __future__ import annotations

from typing import Any

import pytest

from batchd.formats import from_response_format, to_response_format

SCHEMA = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}


@pytest.mark.parametrize(
    ("response_format", "fmt"),
    [
        ({"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA, "strict": True}}, SCHEMA),
        ({"type": "json_object"}, "json"),
        ({"type": "json_schema", "json_schema": {"name": "r"}}, "json"),  # no schema: any JSON object
        ({"type": "text"}, None),
        (None, None),
        ("json", None),  # not OpenAI's shape: ignored, never guessed
    ],
)
def test_from_response_format(response_format: Any, fmt: Any) -> None:
    assert from_response_format(response_format) == fmt


def test_to_response_format_and_back() -> None:
    assert to_response_format(None) is None
    assert to_response_format("json") == {"type": "json_object"}
    assert to_response_format(SCHEMA) == {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}
    pipeline = to_response_format(SCHEMA, name="hiring", strict=True)
    assert pipeline == {"type": "json_schema", "json_schema": {"name": "hiring", "schema": SCHEMA, "strict": True}}
    for fmt in (SCHEMA, "json", None):
        assert from_response_format(to_response_format(fmt)) == fmt


def test_the_four_former_copies_use_it() -> None:
    """ingest (pipeline prefix), translate (request lines -> Ollama), replies (the checker) and the openai
    backend translate through this module only: none spells out the json_schema shape by itself."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "batchd"
    for rel in ("intake/ingest.py", "run/translate.py", "run/replies.py", "backends/openai.py"):
        text = (root / rel).read_text()
        assert "batchd.formats" in text and '"json_schema"' not in text, rel
