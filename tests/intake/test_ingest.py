from __future__ import annotations

import io

import orjson
import pytest

from batchd.errors import InputError
from batchd.intake.ingest import Limits, full_body, pipeline_prefix, read_csv, read_jsonl
from batchd.pipeline import Pipeline

LIMITS = Limits(max_lines=1000, max_line_bytes=4096)


def _jsonl(*lines: bytes | dict, limits: Limits = LIMITS) -> list:
    raw = b"".join((orjson.dumps(x) if isinstance(x, dict) else x) + b"\n" for x in lines)
    return list(read_jsonl(io.BufferedReader(io.BytesIO(raw)), limits))


def _good(cid: str, **body: object) -> dict:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body},
    }


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_line"),
        ({"method": "POST", "url": "/v1/chat/completions", "body": {}}, "invalid_custom_id"),
        ({**_good("x"), "custom_id": 5}, "invalid_custom_id"),
        ({**_good("x"), "custom_id": "c" * 600}, "invalid_custom_id"),
        ({**_good("x"), "method": "GET"}, "invalid_method"),
        ({**_good("x"), "url": "http://evil.example/v1/chat/completions"}, "invalid_url"),
        ({**_good("x"), "url": "/v1/audio/transcriptions"}, "invalid_url"),
        ({**_good("x"), "url": "/v1/embeddings", "body": {"model": "m"}}, "invalid_body"),
        ({**_good("x"), "url": "/v1/embeddings", "body": {"input": []}}, "invalid_body"),
        ({**_good("x"), "url": "/v1/embeddings", "body": {"input": [1, 2]}}, "invalid_body"),
        ({**_good("x"), "url": "/v1/embeddings", "body": {"input": "a", "encoding_format": "int8"}}, "invalid_body"),
        ({**_good("x"), "url": "/v1/embeddings", "body": {"input": "a", "dimensions": 0}}, "invalid_body"),
        ({**_good("x"), "url": "/v1/responses", "body": {"input": []}}, "invalid_body"),
        ({**_good("x"), "url": "/v1/responses", "body": {"input": [{"type": "function_call"}]}}, "invalid_body"),
        (
            {**_good("x"), "url": "/v1/responses", "body": {"input": "a", "text": {"format": {"type": "xml"}}}},
            "invalid_body",
        ),
        ({**_good("x"), "url": "/v1/responses", "body": {"input": "a", "max_output_tokens": -1}}, "invalid_body"),
        ({**_good("x"), "url": "/v1/completions", "body": {"prompt": ""}}, "invalid_body"),
        ({**_good("x"), "url": "/v1/completions", "body": {"prompt": "a", "n": 2}}, "invalid_body"),
        ({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions"}, "invalid_body"),
        ({**_good("x"), "body": {"model": "m"}}, "invalid_messages"),
        ({**_good("x"), "body": {"messages": "hi"}}, "invalid_messages"),
        ({**_good("x"), "body": {"messages": [{"role": "wizard", "content": "x"}]}}, "invalid_messages"),
        ({**_good("x"), "body": {"messages": [{"role": "user", "content": 5}]}}, "invalid_messages"),
        (_good("x", tools={"get_weather": {}}), "invalid_tools"),
        (_good("x", tools=[{"type": "function", "function": {}}]), "invalid_tools"),
        (_good("x", tools=[{"type": "retrieval"}]), "invalid_tools"),
        (_good("x", tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="always"), "invalid_tools"),
        (_good("x", tool_choice="auto"), "invalid_tools"),
        (_good("x", functions=[{"name": "f"}]), "invalid_body"),
        ({**_good("x"), "body": {"messages": [{"role": "tool", "content": "4"}]}}, "invalid_messages"),
        ({**_good("x"), "body": {"messages": [{"role": "user", "content": None}]}}, "invalid_messages"),
    ],
)
def test_each_bad_line_is_an_error_with_its_line_number(line: bytes | dict, code: str) -> None:
    rows = _jsonl(_good("a"), line, _good("b"))
    assert [r.error is None for r in rows] == [True, False, True]
    assert rows[1].line == 2
    assert rows[1].error["code"] == code
    assert rows[1].error["line"] == 2


def test_tool_lines_are_kept_whole() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4 C"},
    ]
    (row,) = _jsonl({**_good("t", tools=tools, tool_choice="required"), "body": {"messages": messages, "tools": tools}})
    assert row.error is None and row.body == {"messages": messages, "tools": tools}


def test_lines_are_routed_by_url_and_an_api_batch_takes_only_its_endpoint() -> None:
    embed = {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": ["a", "b"]}}
    chat, emb = _jsonl(_good("c"), embed)
    assert (chat.url, chat.error) == (None, None)  # chat: stored as None, as every line before version 7
    assert (emb.url, emb.error, emb.body) == ("/v1/embeddings", None, embed["body"])
    raw = b"".join(orjson.dumps(x) + b"\n" for x in (_good("c"), embed))
    rows = list(read_jsonl(io.BufferedReader(io.BytesIO(raw)), LIMITS, endpoint="/v1/embeddings"))
    assert rows[0].error is not None and rows[0].error["code"] == "endpoint_mismatch"
    assert rows[1].error is None


def test_duplicate_custom_id_rejects_later_lines() -> None:
    rows = _jsonl(_good("a"), _good("b"), _good("a"), b"", _good("a"))
    errors = [(r.line, r.error["code"]) for r in rows if r.error]
    assert errors == [(3, "duplicate_custom_id"), (5, "duplicate_custom_id")]
    assert "first on line 1" in rows[2].error["message"]
    assert [r.seq for r in rows] == [1, 2, 3, 4]  # blank lines are skipped, seqs stay dense


def test_allowed_models() -> None:
    rows = _jsonl(
        _good("a"),
        {**_good("b"), "body": {"model": "evil", "messages": [{"role": "user", "content": "x"}]}},
        limits=Limits(max_lines=10, max_line_bytes=4096, allowed_models=("m",)),
    )
    assert rows[0].error is None
    assert rows[1].error["code"] == "model_not_allowed"


def test_overlong_line_is_an_error_not_a_memory_spike() -> None:
    long = orjson.dumps({**_good("big"), "pad": "x" * 10_000})
    rows = _jsonl(_good("a"), long, _good("b"))
    assert rows[1].error["code"] == "line_too_long"
    assert rows[2].custom_id == "b" and rows[2].error is None


def test_too_many_lines_fails_the_file() -> None:
    with pytest.raises(InputError, match="more than 3"):
        _jsonl(*[_good(str(i)) for i in range(5)], limits=Limits(max_lines=3, max_line_bytes=4096))


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\x89PNG\r\n\x1a\n....", "binary_file"),
        (b"\x1f\x8b\x08\x00", "binary_file"),
        (b"PK\x03\x04xlsx", "binary_file"),
        ("\ufeffa,b\n".encode("utf-16"), "not_utf8"),
        ("name\nJos\xe9\n".encode("latin-1"), "not_utf8"),
        (b"a,b\x00c\n", "binary_file"),
    ],
)
def test_files_that_are_not_utf8_text_fail_with_a_reason(raw: bytes, code: str) -> None:
    with pytest.raises(InputError) as info:
        read_csv(io.BufferedReader(io.BytesIO(raw)), Pipeline(), LIMITS)
    assert info.value.code == code


def _csv(raw: bytes, pipeline: Pipeline | None = None) -> tuple[list[str], list]:
    header, rows = read_csv(io.BufferedReader(io.BytesIO(raw)), pipeline or Pipeline(), LIMITS)
    return header, list(rows)


def test_csv_bom_crlf_quoted_newlines() -> None:
    raw = '\ufeffname,notes\r\n"Zoë, Jr","line one\r\nline two"\r\nBob,plain\r\n'.encode()
    header, rows = _csv(raw)
    assert header == ["name", "notes"]
    assert [r.custom_id for r in rows] == ["row-1", "row-2"]
    body = full_body(pipeline_prefix(Pipeline(), "m"), rows[0].body or {})
    assert body["messages"][-1]["content"] == "name: Zoë, Jr\nnotes: line one\r\nline two"
    assert rows[1].line == 4  # physical line of the row's start


def test_csv_missing_and_extra_columns_are_row_errors() -> None:
    header, rows = _csv(b"a,b\n1,2\n3\n4,5,6\n7,8\n")
    assert [(r.line, (r.error or {}).get("code")) for r in rows] == [
        (2, None),
        (3, "invalid_row"),
        (4, "invalid_row"),
        (5, None),
    ]
    assert "missing" in rows[1].error["message"] and "extra" in rows[2].error["message"]


def test_csv_through_a_pipeline_template_and_id_column() -> None:
    p = Pipeline(system_prompt="Rate.", user_template="Name: {name}", id_column="id", passthrough_columns=["name"])
    _, rows = _csv(b"id,name\nC1,Ada\nC1,Bob\n,Eve\n", p)
    assert rows[0].custom_id == "C1" and rows[0].row == {"name": "Ada"}
    assert rows[0].body == {"~v": {"name": "Ada"}}  # journaled compactly: only the values the template uses
    body = full_body(pipeline_prefix(p, "m"), rows[0].body)
    assert body["messages"] == [{"role": "system", "content": "Rate."}, {"role": "user", "content": "Name: Ada"}]
    assert "~t" not in body and "~v" not in body
    assert rows[1].error["code"] == "duplicate_custom_id"
    assert rows[2].error["code"] == "invalid_custom_id"


def test_template_naming_a_missing_column_fails_at_load() -> None:
    p = Pipeline(user_template="{name} has {skills}")
    with pytest.raises(InputError, match="'skills'"):
        _csv(b"name,title\nAda,Eng\n", p)


def test_unbalanced_quote_reports_the_line() -> None:
    raw = b'a,b\n1,2\n3,"oops\n' + b"x" * 5000 + b"\n"
    _, rows = _csv(raw)
    assert rows[0].error is None
    assert rows[-1].error is not None and rows[-1].line == 3


def test_a_csv_line_over_max_line_bytes_is_an_error_record_read_in_bounded_memory() -> None:
    """Issue 22 item 5: one 300 MB cell peaked at 667 MB (the line was read whole). Here 40 MB against a
    64 KiB limit: the row is the file's error record and Python never holds more than a few limits."""
    import tracemalloc

    raw = b"text\nshort\n" + b"x" * 40_000_000 + b"\nafter\n"
    limits = Limits(max_lines=100, max_line_bytes=65536)
    fh = io.BufferedReader(io.BytesIO(raw))
    tracemalloc.start()
    try:
        _, gen = read_csv(fh, Pipeline(user_template="{text}"), limits)
        rows = list(gen)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.error["code"] if r.error else None for r in rows] == [None, "line_too_long"]
    assert "limits.max_line_bytes" in rows[1].error["message"] and rows[1].line == 3
    assert peak < 4_000_000, peak


def test_a_quoted_cell_over_max_line_bytes_across_lines_is_line_too_long() -> None:
    raw = b'text\n"' + b"y" * 1000 + b"\n" + b"y" * 1000 + b'"\nok\n'
    _, gen = read_csv(io.BufferedReader(io.BytesIO(raw)), Pipeline(), Limits(max_lines=100, max_line_bytes=1500))
    rows = list(gen)
    assert rows[0].error is not None and rows[0].error["code"] == "line_too_long", rows
