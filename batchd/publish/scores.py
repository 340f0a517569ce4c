"""Scores: turn one journaled request into one ``scores.csv`` row, with safe cells.

With a JSON schema the reply is JSON by construction (``replies`` checked it);
without one a tolerant extractor finds ``score: 7``, ``7/10``, ``Score - 7``,
``**Score:** 7`` or ``8 out of 10`` and otherwise marks the row ``unparsed``.

File format, chosen for spreadsheets and scripts alike: UTF-8 *without* a
byte-order mark, comma separated, CRLF line ends, every cell that needs it
quoted (RFC 4180, Python's ``csv`` module). No BOM because a BOM ends up in
the first column name of every naive reader (``csv.DictReader`` with
``utf-8``, ``cut``, ``awk``) and the outbox contract starts the header with
``custom_id``. LibreOffice asks for the encoding on open and defaults to
UTF-8; in Excel use Data → From Text/CSV (it detects UTF-8), since a
double-click reads BOM-less files in the legacy code page and garbles
non-ASCII names. ``report.html`` is the view meant for people.

Formula injection: a text cell (from the input *or* the model) that starts
with ``=``, ``+``, ``-``, ``@``, tab or CR (or, after leading white space or a
newline, with one of those or a full-width ``＝＋－＠``), and every header cell
taken from ``pipeline.toml``, is prefixed with ``'`` so Excel and
LibreOffice show it as text instead of running it (OWASP "CSV Injection").
Real numbers stay numbers, negative ones included: ``-3`` is written bare,
while ``-3+cmd|' /C calc'!A0`` is not a number and gets the prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchd.journal import ReqState, Request
from batchd.replyjson import as_number, parse_json_reply

_SCORE_PATTERNS = (
    # score: 7 / Score - 7 / **Score:** 7 / score is 7 / score = 7.5
    re.compile(r"\bscore\b\s*\**\s*(?:is|of|=|:|-|–|—)?\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"(-?\d+(?:\.\d+)?)\s*/\s*10\b"),
    re.compile(r"(-?\d+(?:\.\d+)?)\s+out of\s+10\b", re.IGNORECASE),
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: after leading white space (which spreadsheets skip), these start a formula too: ASCII and full-width
_FORMULA_AFTER_SPACE = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?\Z")


def extract_score(content: str, field: str = "score") -> float | int | None:
    """A score from a JSON reply's field, else from free text; None when there is none."""
    try:
        data = parse_json_reply(content)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return as_number(data.get(field))
    return free_text_score(content)


def free_text_score(content: str) -> float | int | None:
    for pattern in _SCORE_PATTERNS:
        m = pattern.search(content)
        if m:
            return as_number(m.group(1))
    return None


def safe_cell(value: Any) -> str:
    """A CSV cell that Excel and LibreOffice show as text, never run as a formula."""
    if value is None:
        return ""
    if type(value) is str:  # the common case first: this runs for every cell of 170,000 rows
        text = value
    elif isinstance(value, bool):
        return "true" if value else "false"
    elif isinstance(value, (int, float)):
        return str(value)
    elif isinstance(value, (list, tuple)):
        text = "; ".join("" if v is None else str(v) for v in value)
    elif isinstance(value, dict):
        text = orjson.dumps(value).decode()
    else:
        text = str(value)
    if "\x00" in text:
        text = text.replace("\x00", "")  # spreadsheets cut cells at NUL
    if (text.startswith(_FORMULA_START) or text.lstrip().startswith(_FORMULA_AFTER_SPACE)) and not _PLAIN_NUMBER.match(
        text
    ):
        return "'" + text
    return text


def schema_fields(fmt: Any) -> list[str]:
    if isinstance(fmt, dict):
        props = fmt.get("properties")
        if isinstance(props, dict):
            return list(props)
    return []


@dataclass(frozen=True)
class Scored:
    """What one request contributes to scores.csv and report.html."""

    seq: int
    custom_id: str | None
    status: str  # ok, unparsed, failed, invalid, skipped, queued, running
    score: float | int | None
    values: dict[str, Any] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = None


class ScoreSheet:
    """The columns of a job's scores.csv and how a journaled request fills them."""

    def __init__(
        self,
        *,
        fields: list[str],
        score_field: str = "score",
        passthrough: list[str] | None = None,
        scale: tuple[float, float] | None = None,
    ) -> None:
        self.score_field = score_field
        self.passthrough = list(passthrough or [])
        self.fields = [f for f in fields if f != score_field]
        #: the schema's minimum and maximum for the score, when it names both
        self.scale = scale

    @classmethod
    def for_job(cls, pipeline: Any, kind: str) -> ScoreSheet:
        """The sheet of a job; ``pipeline`` is its Pipeline, or None for JSONL jobs."""
        if pipeline is None:
            return cls(fields=[])
        fmt = pipeline.format
        spec = (fmt.get("properties") or {}).get(pipeline.score_field) if isinstance(fmt, dict) else None
        scale = None
        if isinstance(spec, dict):
            lo, hi = as_number(spec.get("minimum")), as_number(spec.get("maximum"))
            scale = (float(lo), float(hi)) if lo is not None and hi is not None and lo < hi else None
        return cls(
            fields=schema_fields(fmt),
            score_field=pipeline.score_field,
            scale=scale,
            passthrough=pipeline.passthrough_columns if kind == "csv" else [],
        )

    def header(self) -> list[str]:
        # custom_id,status,score first: the outbox contract; then what a reader scans for. The columns
        # batchd adds itself are pipeline.RESERVED_COLUMNS (a pipeline may not reuse their names).
        # The names come from pipeline.toml (a group member's file): neutralised like data cells.
        return [
            "custom_id",
            "status",
            safe_cell(self.score_field),
            *map(safe_cell, self.passthrough),
            *map(safe_cell, self.fields),
            "attempts",
            "prompt_tokens",
            "completion_tokens",
        ]

    def score(self, req: Request) -> Scored:
        status = {ReqState.DONE: "ok", ReqState.FAILED: "failed", ReqState.INVALID: "invalid"}.get(
            req.state, req.state.value
        )
        score: float | int | None = None
        values: dict[str, Any] = {}
        if req.state is ReqState.DONE and req.result and req.vector is None:  # a vector has no text to score
            content = _content(req.result)
            try:
                parsed = parse_json_reply(content)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                values = parsed
                score = as_number(parsed.get(self.score_field))
            else:
                score = free_text_score(content)
            if score is None:
                status = "unparsed"
        error = req.error or {}
        return Scored(
            seq=req.seq,
            custom_id=req.custom_id,
            status=status,
            score=score,
            values=values,
            row=dict(req.row or {}),
            attempts=req.attempts,
            prompt_tokens=req.prompt_tokens,
            completion_tokens=req.completion_tokens,
            error_code=error.get("code"),
            error_message=error.get("message"),
        )

    def cells(self, s: Scored) -> list[str]:
        return [
            safe_cell(s.custom_id),
            s.status,
            safe_cell(s.score),
            *[safe_cell(s.row.get(c)) for c in self.passthrough],
            *[safe_cell(s.values.get(c)) for c in self.fields],
            str(s.attempts),
            safe_cell(s.prompt_tokens),
            safe_cell(s.completion_tokens),
        ]


def _content(result: dict[str, Any]) -> str:
    try:
        content = result["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""
