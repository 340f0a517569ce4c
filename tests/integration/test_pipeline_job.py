"""A CSV through pipeline folders end to end: schema replies, retries, safe cells, the report."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import orjson

from batchd.config import Settings
from tests.support.emulator import Emulator
from tests.support.factories import Folders, read_jsonl
from tests.support.running import run_daemon_once

SCHEMA = """
[format]
type = "object"
required = ["score", "verdict", "why"]
[format.properties.score]
type = "integer"
minimum = 1
maximum = 10
[format.properties.verdict]
type = "string"
enum = ["=1+1", "@SUM(A1)", "-1+2", "+3"]   # every value a spreadsheet would run
[format.properties.why]
type = "string"
"""
PIPELINE = (
    """
system_prompt = "Score the candidate from 1 to 10."
user_template = "Candidate: {note}"
id_column = "id"
passthrough_columns = ["name", "note", "delta"]
reply_retries = 2
mode = "isolated"
"""
    + SCHEMA
)
CSV = (
    "id,name,note,delta\n"
    'A1,Zoë Laurent,"Python, SQL and ""Airflow""",-5\n'
    "A2,Plain Person,<<GARBAGE>> first reply is not JSON,3\n"
    "A3,\"=cmd|' /C calc'!A0\",ordinary,+1 555\n"
    "A4,Short Row\n"
    'A5,"Multi\nLine",@SUM(B1),-2.5\n'
)


def _run(settings: Settings) -> None:
    run_daemon_once(settings)


def _drop(folders: Folders, name: str, pipeline: str, data: str) -> None:
    folder = folders.inbox / name
    folder.mkdir()
    (folder / "pipeline.toml").write_text(pipeline, encoding="utf-8")
    (folder / f"{name}.csv").write_text(data, encoding="utf-8")


def _scores(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_schema_replies_retries_and_safe_cells(
    folders: Folders, emulator: Emulator, make_settings: Callable[..., Settings]
) -> None:
    _drop(folders, "cands", PIPELINE, CSV)
    _run(make_settings())
    out = folders.outbox / "cands"
    rows = _scores(out / "scores.csv")
    assert list(rows[0]) == [
        "custom_id",
        "status",
        "score",
        "name",
        "note",
        "delta",
        "verdict",
        "why",
        "attempts",
        "prompt_tokens",
        "completion_tokens",
    ]
    assert [r["custom_id"] for r in rows] == ["A1", "A2", "A3", "A4", "A5"]  # one row per input row, in order
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "invalid", "ok"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(1 <= int(r["score"]) <= 10 and r["why"] and int(r["prompt_tokens"]) > 0 for r in ok)
    # the <<GARBAGE>> row was corrected on its second attempt
    assert [r["attempts"] for r in rows] == ["1", "2", "1", "0", "1"]
    corrections = [
        c for c in emulator.calls if "previous answer was invalid" in str(c.get("messages", [{}])[-1].get("content"))
    ]
    assert len(corrections) == 1 and "not JSON" in corrections[0]["messages"][-1]["content"]
    # formula injection, from the model (verdict) and from the input (name, note, delta)
    assert all(r["verdict"].startswith("'") for r in ok)
    assert rows[2]["name"] == "'=cmd|' /C calc'!A0" and rows[2]["delta"] == "'+1 555"
    assert rows[4]["note"] == "'@SUM(B1)" and rows[4]["name"] == "Multi\nLine"
    assert rows[0]["delta"] == "-5" and rows[4]["delta"] == "-2.5"  # real numbers stay numbers
    assert rows[0]["name"] == "Zoë Laurent" and rows[0]["note"] == 'Python, SQL and "Airflow"'
    assert (out / "scores.csv").read_bytes().startswith(b"custom_id,")  # no BOM
    errors = read_jsonl(out / "errors.jsonl")
    assert [e["custom_id"] for e in errors] == ["A4"] and errors[0]["line"] == 5
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "Zoë Laurent" in report and "Score distribution" in report and "<script" not in report
    assert "invalid_row" in report  # failures by cause


def test_invalid_replies_are_retried_then_recorded(
    folders: Folders, emulator: Emulator, make_settings: Callable[..., Settings]
) -> None:
    # The emulator ignores `pattern`, so every reply fails this schema: retried, then failed.
    strict = PIPELINE.replace(
        '[format.properties.why]\ntype = "string"', '[format.properties.why]\ntype = "string"\npattern = "^NEVER$"'
    )
    _drop(folders, "strict", strict, "id,name,note,delta\nB1,x,one,1\nB2,y,two <<GARBAGE>>,2\n")
    _run(make_settings())
    out = folders.outbox / "strict"
    rows = _scores(out / "scores.csv")
    assert [(r["status"], r["attempts"], r["score"]) for r in rows] == [("failed", "3", ""), ("failed", "3", "")]
    errors = read_jsonl(out / "errors.jsonl")
    assert [e["custom_id"] for e in errors] == ["B1", "B2"]
    assert all(e["error"]["code"] == "invalid_reply" and "why" in e["error"]["message"] for e in errors)
    assert orjson.loads(errors[0]["raw_reply"])["why"]  # the last raw reply is kept
    assert errors[1]["raw_reply"]
    metrics = orjson.loads((out / "metrics.json").read_bytes())
    assert metrics["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    assert "invalid_reply" in (out / "report.html").read_text(encoding="utf-8")


def test_free_text_replies_without_a_schema(
    folders: Folders, emulator: Emulator, make_settings: Callable[..., Settings]
) -> None:
    _drop(folders, "free", 'user_template = "Rate {name}"\nreply_retries = 2\n', "name\nAda\nGrace\n<<GARBAGE>>\n")
    _run(make_settings())
    rows = _scores(folders.outbox / "free" / "scores.csv")
    assert list(rows[0]) == ["custom_id", "status", "score", "attempts", "prompt_tokens", "completion_tokens"]
    assert [r["custom_id"] for r in rows] == ["row-1", "row-2", "row-3"]
    # "Score: 7/10. ..." parses; "not json at all" has no score and is not retried without a schema
    assert [r["status"] for r in rows] == ["ok", "ok", "unparsed"]
    assert all(1 <= int(r["score"]) <= 10 for r in rows[:2]) and rows[2]["score"] == ""
    assert rows[2]["attempts"] == "1"
    assert "unparsed" in (folders.outbox / "free" / "report.html").read_text(encoding="utf-8")


def test_garbage_reply_without_retries_keeps_the_raw_reply(
    folders: Folders, emulator: Emulator, make_settings: Callable[..., Settings]
) -> None:
    _drop(
        folders,
        "once",
        PIPELINE.replace("reply_retries = 2", "reply_retries = 0"),
        "id,name,note,delta\nG1,x,<<GARBAGE>>,1\nG2,y,fine,2\n",
    )
    _run(make_settings())
    out = folders.outbox / "once"
    rows = _scores(out / "scores.csv")
    assert [(r["status"], r["attempts"]) for r in rows] == [("failed", "1"), ("ok", "1")]
    (error,) = read_jsonl(out / "errors.jsonl")
    assert error["custom_id"] == "G1" and error["raw_reply"] == "not json at all"
    assert error["error"]["code"] == "invalid_reply" and "not JSON" in error["error"]["message"]
