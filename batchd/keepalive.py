"""``keep_alive`` as Ollama parses it: a number of seconds, or a Go duration string.

Read from ollama/ollama ``api/types.go`` ``Duration.UnmarshalJSON``: a JSON number of seconds or a
duration ``time.ParseDuration`` accepts (``"5m"``, ``"1h30m"``); negative means "forever". The string
``"-1"`` fails ``time.ParseDuration`` (no unit): a 400 on every request. A root leaf, because the
settings check it when loaded and the Ollama backend sends it (``backends.ollama_facts`` has the rest).
"""

from __future__ import annotations

import re
from typing import Any

_GO_DURATION = re.compile(r"-?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def encode_keep_alive(value: Any) -> int | float | str:
    """``keep_alive`` as Ollama parses it: a number of seconds, or a Go duration string.

    ``"-1"`` / ``"300"`` (a number in a string, as environment variables arrive) become numbers;
    ``"5m"`` stays a string; anything else raises ValueError naming the accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError("keep_alive must be seconds (a number) or a duration like '5m', '1h', '-1'")
    if isinstance(value, (int, float)):
        return value
    text = str(value).strip()
    if _NUMBER.fullmatch(text):
        number = float(text)
        return int(number) if number.is_integer() else number
    if text == "0" or _GO_DURATION.fullmatch(text):
        return text
    raise ValueError(f"keep_alive {value!r} is neither seconds nor a duration like '5m', '1h30m', '-1'")
