"""Score extraction, formula-safe cells and the scores.csv row of one request."""

from __future__ import annotations

import csv
import io

import pytest

from batchd.journal import ReqState, Request
from batchd.pipeline import RESERVED_COLUMNS
from batchd.publish.scores import ScoreSheet, extract_score, safe_cell, schema_fields


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("score: 7", 7),
        ("Score - 7. Good fit.", 7),
        ("**Score:** 7\nStrong Python.", 7),
        ("Final score is 6.5 overall", 6.5),
        ("I rate this candidate 7/10.", 7),
        ("7 / 10", 7),
        ("Overall 8 out of 10, solid.", 8),
        ('{"score": 9, "why": "x"}', 9),
        ('```json\n{"score": "4"}\n```', 4),
    ],
)
def test_tolerant_extraction_finds_the_score(text: str, score: float) -> None:
    assert extract_score(text) == score


@pytest.mark.parametrize("text", ["A fine candidate.", "", '{"score": true}', '{"score": "high"}', '{"other": 3}'])
def test_no_score_is_none(text: str) -> None:
    assert extract_score(text) is None


def test_json_reply_uses_the_configured_field() -> None:
    assert extract_score('{"rating": 3, "score": 9}', "rating") == 3


@pytest.mark.parametrize(
    "text", ["=1+1", "+1 555 0100", "-2+3", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("http://evil")', "-cmd|' /C calc'!A0"]
)
def test_formula_cells_get_a_quote(text: str) -> None:
    assert safe_cell(text) == "'" + text


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        (-3, "-3"),
        ("-3", "-3"),
        ("-2.5", "-2.5"),
        (7, "7"),
        (0.5, "0.5"),
        (None, ""),
        (True, "true"),
        ("plain, text", "plain, text"),
        (["a", "=b"], "a; =b"),
        (["=a", "b"], "'=a; b"),
        ("a\x00b", "ab"),
    ],
)
def test_safe_cells(value: object, cell: str) -> None:
    assert safe_cell(value) == cell


def test_schema_fields() -> None:
    assert schema_fields({"type": "object", "properties": {"score": {}, "why": {}}}) == ["score", "why"]
    assert schema_fields("json") == []
    assert schema_fields(None) == []


def _req(seq: int, state: ReqState, content: str | None = None, **kw: object) -> Request:
    result = {"choices": [{"message": {"role": "assistant", "content": content}}]} if content is not None else None
    fields: dict[str, object] = dict(
        job_id="j",
        seq=seq,
        line=seq + 1,
        custom_id=f"c{seq}",
        body=None,
        row={"name": "=evil()", "title": "-5"},
        state=state,
        attempts=1,
        result=result,
        error=None,
        prompt_tokens=10,
        completion_tokens=3,
    )
    fields.update(kw)
    return Request(**fields)  # type: ignore[arg-type]


def test_sheet_rows_in_a_csv_round_trip() -> None:
    sheet = ScoreSheet(fields=["score", "why", "tags"], passthrough=["name", "title"])
    rows = [
        _req(1, ReqState.DONE, '{"score": 8, "why": "=cmd", "tags": ["a, b", "c\\"d"]}'),
        _req(2, ReqState.DONE, "no idea"),
        _req(3, ReqState.FAILED, None, attempts=3, error={"code": "invalid_reply", "message": "x"}),
        _req(4, ReqState.INVALID, None, attempts=0, row=None),
        _req(5, ReqState.SKIPPED, None, attempts=0),
    ]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(sheet.header())
    for r in rows:
        w.writerow(sheet.cells(sheet.score(r)))
    got = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert list(got[0]) == [
        "custom_id",
        "status",
        "score",
        "name",
        "title",
        "why",
        "tags",
        "attempts",
        "prompt_tokens",
        "completion_tokens",
    ]
    assert [g["status"] for g in got] == ["ok", "unparsed", "failed", "invalid", "skipped"]
    assert got[0]["score"] == "8" and got[0]["why"] == "'=cmd" and got[0]["tags"] == 'a, b; c"d'
    assert got[0]["name"] == "'=evil()" and got[0]["title"] == "-5"
    assert got[1]["score"] == ""
    assert got[2]["attempts"] == "3"
    assert got[3]["name"] == ""
    scored = sheet.score(rows[2])
    assert scored.error_code == "invalid_reply"


def test_the_reserved_columns_are_the_ones_batchd_adds() -> None:
    """``pipeline`` refuses these names for passthrough columns and fields: they are the sheet's own."""
    header = ScoreSheet(fields=[], passthrough=[], score_field="rating").header()
    assert sorted(RESERVED_COLUMNS) == sorted(set(header) - {"rating"})
