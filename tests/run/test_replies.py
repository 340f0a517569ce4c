"""Reply validation against the pipeline's schema, and the checker a job gets."""

from __future__ import annotations

import orjson

from batchd.run.replies import ReplyChecker, checker_for

SCHEMA = {
    "type": "object",
    "required": ["recommendation"],
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
        "recommendation": {"type": "string", "enum": ["yes", "no"]},
    },
}


def test_valid_reply_passes() -> None:
    assert ReplyChecker(SCHEMA).problem('{"score": 7, "recommendation": "yes"}') is None
    assert ReplyChecker(SCHEMA).problem('```json\n{"score": 7, "recommendation": "yes"}\n```') is None


def test_not_json_is_a_problem() -> None:
    problem = ReplyChecker(SCHEMA).problem("Score: 7, I think")
    assert problem is not None and "not JSON" in problem


def test_score_out_of_range_names_the_field() -> None:
    problem = ReplyChecker(SCHEMA).problem('{"score": 11, "recommendation": "yes"}')
    assert problem is not None and problem.startswith("score:") and "10" in problem


def test_schema_violation_names_the_field() -> None:
    problem = ReplyChecker(SCHEMA).problem('{"score": 3, "recommendation": "perhaps"}')
    assert problem is not None and problem.startswith("recommendation:")


def test_score_field_must_be_present_when_the_schema_has_it() -> None:
    # "score" is not in `required`, yet a scoring pipeline without a score is useless.
    assert ReplyChecker(SCHEMA).problem('{"recommendation": "no"}') == "score: missing"
    loose = {"type": "object", "properties": {"score": {}}}
    assert "not a number" in (ReplyChecker(loose).problem('{"score": "high"}') or "")
    assert ReplyChecker(loose).problem('{"score": "7"}') is None


def test_no_schema_checks_nothing_and_never_retries() -> None:
    checker = ReplyChecker(None, retries=5)
    assert checker.problem("whatever") is None
    assert checker.retries == 0


def test_json_mode_wants_an_object() -> None:
    checker = ReplyChecker("json")
    assert checker.problem("[1, 2]") == "reply is JSON but not an object"
    assert checker.problem('{"a": 1}') is None


def test_correction_is_short_and_names_the_problem() -> None:
    text = ReplyChecker(SCHEMA).correction("score: 11 is greater than the maximum of 10" + "x" * 1000)
    assert "maximum of 10" in text and len(text) < 500


def test_checker_for_a_job_prefix() -> None:
    prefix = {
        "model": "m",
        "messages": [],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "p", "schema": {"type": "object", "properties": {"rating": {"type": "number"}}}},
        },
    }
    checker = checker_for(prefix, orjson.dumps({"reply_retries": 4, "score_field": "rating"}).decode())
    assert checker.retries == 4
    assert checker.problem("{}") == "rating: missing"
    assert checker_for(None, None).format is None
    assert checker_for({"response_format": {"type": "json_object"}}, None).format == "json"
