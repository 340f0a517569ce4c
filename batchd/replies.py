"""Checks a model's reply against the pipeline's JSON schema and phrases the correction.

An invalid reply (not JSON, fails the schema, score out of range) is retried
with a short correction message up to ``pipeline.reply_retries``; after that
the request fails with the raw reply kept.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from batchd.scores import parse_json_reply


class ReplyChecker:
    def __init__(self, fmt: dict[str, Any] | str | None, *, retries: int = 2) -> None:
        self.format = fmt
        self.retries = retries if fmt is not None else 0
        self._validator = jsonschema.Draft202012Validator(fmt) if isinstance(fmt, dict) else None

    def problem(self, content: str) -> str | None:
        """None when the reply is acceptable, else a one-line reason."""
        if self.format is None:
            return None
        try:
            data = parse_json_reply(content)
        except ValueError as exc:
            return str(exc)
        if self._validator is None:
            return None if isinstance(data, dict) else "reply is JSON but not an object"
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(data))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "reply"
        return f"{where}: {error.message}"

    def correction(self, problem: str) -> str:
        return (f"Your previous answer was invalid ({problem[:300]}). "
                "Answer again with only a JSON object that matches the required schema.")
