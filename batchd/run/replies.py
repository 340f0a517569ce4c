"""Checks a model's reply against the pipeline's JSON schema and phrases the correction.

An invalid reply (not JSON, fails the schema, score out of range, score
missing or not a number) is retried with a short correction message up to
``pipeline.reply_retries``; after that the request fails with the raw reply
kept. Without a schema nothing is checked here: ``scores`` extracts what it
can and marks the rest ``unparsed``.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson

from batchd.formats import from_response_format
from batchd.replyjson import as_number, parse_json_reply
from batchd.schemas import CHECK_ERRORS, reply_validator


class ReplyChecker:
    def __init__(self, fmt: dict[str, Any] | str | None, *, retries: int = 2, score_field: str = "score") -> None:
        self.format = fmt
        self.retries = retries if fmt is not None else 0
        self._validator = reply_validator(fmt) if isinstance(fmt, dict) else None
        props = fmt.get("properties") if isinstance(fmt, dict) else None
        # Only a schema that declares the score field promises one; others may not score at all.
        self.score_field = score_field if isinstance(props, dict) and score_field in props else None

    def problem(self, content: str) -> str | None:
        """None when the reply is acceptable, else a one-line reason."""
        if self.format is None:
            return None
        try:
            data = parse_json_reply(content)
        except ValueError as exc:
            return str(exc)
        if not isinstance(data, dict):
            return "reply is JSON but not an object"
        if self._validator is None:
            return None
        try:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(data))
        except CHECK_ERRORS as exc:
            # A schema from before the load-time checks (a reference outside it): never retrieved.
            return f"the reply cannot be checked against the schema ({type(exc).__name__})"
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "reply"
            return f"{where}: {error.message}"
        if self.score_field is not None:
            value = data.get(self.score_field)
            if value is None:
                return f"{self.score_field}: missing"
            if as_number(value) is None:
                return f"{self.score_field}: {str(value)[:40]!r} is not a number"
        return None

    def correction(self, problem: str) -> str:
        return (
            f"Your previous answer was invalid ({problem[:300]}). "
            "Answer again with only a JSON object that matches the required schema."
        )


def checker_for(prefix: dict[str, Any] | None, pipeline_json: str | None) -> ReplyChecker:
    """The checker for a job: pipeline jobs carry their schema in the prefix's response_format."""
    if not prefix:
        return ReplyChecker(None)
    pipeline = orjson.loads(pipeline_json) if pipeline_json else {}
    retries = int(pipeline.get("reply_retries", 2))
    fmt = from_response_format(prefix.get("response_format"))
    return ReplyChecker(fmt, retries=retries, score_field=str(pipeline.get("score_field") or "score"))
