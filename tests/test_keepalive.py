"""keep_alive as Ollama parses it: numbers stay numbers, Go durations stay strings, the rest is refused."""

from __future__ import annotations

from typing import Any

import pytest

from batchd.config import Settings
from batchd.errors import ConfigError
from batchd.keepalive import encode_keep_alive


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("-1", -1),
        ("300", 300),
        ("1.5", 1.5),
        (-1, -1),
        ("5m", "5m"),
        ("1h30m", "1h30m"),
        ("0", 0),
        ("-1m", "-1m"),
        ("500ms", "500ms"),
    ],
)
def test_keep_alive_is_encoded_as_ollama_parses_it(value: Any, encoded: Any) -> None:
    assert encode_keep_alive(value) == encoded
    assert type(encode_keep_alive(value)) is type(encoded)


@pytest.mark.parametrize("value", ["forever", "5 minutes", "m5", "1d"])
def test_a_keep_alive_ollama_would_refuse_is_a_config_error(value: Any) -> None:
    with pytest.raises(ValueError):
        encode_keep_alive(value)
    with pytest.raises((ConfigError, ValueError)):
        Settings(backend={"keep_alive": value})
