"""A reply read as JSON (fence tolerated) and a JSON value read as a score."""

from __future__ import annotations

import pytest

from batchd.replyjson import as_number, parse_json_reply


def test_as_number_refuses_booleans_and_nan() -> None:
    assert as_number(True) is None
    assert as_number("nan") is None
    assert as_number(" 7.0 ") == 7


@pytest.mark.parametrize("text", ['{"score": 4}', '```json\n{"score": 4}\n```', '  ```\n{"score": 4}```  '])
def test_a_fenced_reply_is_json_too(text: str) -> None:
    assert parse_json_reply(text) == {"score": 4}


@pytest.mark.parametrize("text", ["score: 4", "```json", ""])
def test_a_reply_that_is_not_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="reply is not JSON"):
        parse_json_reply(text)
