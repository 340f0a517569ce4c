"""Streaming readers that turn a spooled JSONL or CSV file into request rows.

Every line is validated on its own: a bad line becomes an error record with
its line number and the good lines still run. A file that is not text at all,
or breaks a limit, raises ``InputError`` and fails as a whole. Nothing here
loads a whole file into memory.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from batchd.backends.base import OLLAMA_TO_OPENAI
from batchd.errors import ConfigError, InputError, LineError
from batchd.formats import to_response_format
from batchd.intake.endpoints import CHECKS, Endpoint, check_image, stored
from batchd.journal import NewRequest
from batchd.pipeline import Pipeline, template_fields

SUPPORTED = {".jsonl": "jsonl", ".csv": "csv"}
CHAT_URL = "/v1/chat/completions"
MAX_CUSTOM_ID = 512
ROLES = {"system", "user", "assistant", "tool", "developer"}
#: a CSV row is journaled compactly: its body holds only the values its message uses (``{"~v": {...}}``)
#: and the job's prefix the user template once (``"~t"``); ``full_body`` renders the message at send time
VALUES_KEY = "~v"
TEMPLATE_KEY = "~t"


@dataclass(frozen=True)
class Limits:
    max_lines: int
    max_line_bytes: int
    allowed_models: tuple[str, ...] = ()
    max_image_bytes: int = 8 * 1024**2
    max_images: int = 8


def sniff_text(head: bytes) -> None:
    """Refuse files that are not UTF-8 text, with a reason a person can act on."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError("file is UTF-16 text; save it as UTF-8 (CSV UTF-8 in Excel)", code="not_utf8")
    for magic, what in (
        (b"\x89PNG", "a PNG image"),
        (b"\x1f\x8b", "gzip-compressed"),
        (b"PK\x03\x04", "a zip archive (an .xlsx workbook?)"),
        (b"%PDF", "a PDF document"),
    ):
        if head.startswith(magic):
            raise InputError(f"file is binary ({what}), not text", code="binary_file")
    if b"\x00" in head:
        raise InputError("file is binary (contains NUL bytes), not text; UTF-16 without BOM?", code="binary_file")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"file is not UTF-8 text (byte 0x{head[exc.start]:02x} at offset {exc.start}); save it as UTF-8",
            code="not_utf8",
        ) from exc


def full_body(prefix: dict[str, Any] | None, body: dict[str, Any]) -> dict[str, Any]:
    """A request's OpenAI body: the job's shared prefix merged with the row's own part."""
    if not prefix:
        return body
    merged = {**prefix, **body}
    values = merged.pop(VALUES_KEY, None)
    template = merged.pop(TEMPLATE_KEY, None)
    merged["messages"] = [*prefix.get("messages", []), *body.get("messages", [])]
    if isinstance(values, dict):
        merged["messages"].append({"role": "user", "content": render_values(template, values)})
    return merged


def render_values(template: str | None, values: dict[str, str]) -> str:
    """A CSV row's user message (``Pipeline.render_user``) from its journaled values."""
    if template is None:
        return "\n".join(f"{k}: {v}" for k, v in values.items())
    return template.format_map(values)


def pipeline_prefix(pipeline: Pipeline, model: str) -> dict[str, Any]:
    """The byte-identical part every CSV row shares, as an OpenAI body fragment."""
    if pipeline.task == "embed":  # no prompt, no sampling: the model, and dimensions where asked
        dims = pipeline.options.get("dimensions")
        return {"model": model, **({"dimensions": dims} if dims else {})}
    prefix: dict[str, Any] = {"model": model, "messages": pipeline.prefix_messages()}
    prefix[TEMPLATE_KEY] = pipeline.user_template
    native: dict[str, Any] = {}
    for key, value in pipeline.options.items():
        if key in OLLAMA_TO_OPENAI:
            prefix[OLLAMA_TO_OPENAI[key]] = value
        else:
            native[key] = value
    if native:
        prefix["options"] = native
    response_format = to_response_format(pipeline.format, name=pipeline.name or "reply", strict=True)
    if response_format is not None:
        prefix["response_format"] = response_format
    return prefix


def _lines(fh: BinaryIO, limits: Limits) -> Iterator[tuple[int, bytes]]:
    lineno = 0
    while True:
        raw = fh.readline(limits.max_line_bytes + 1)
        if not raw:
            return
        lineno += 1
        if lineno > limits.max_lines:
            raise InputError(f"more than {limits.max_lines:,} lines (limits.max_lines)", code="too_many_lines")
        if len(raw) > limits.max_line_bytes and not raw.endswith(b"\n"):
            # Skip the rest of the over-long line without holding it in memory.
            while raw and not raw.endswith(b"\n"):
                raw = fh.readline(1 << 20)
            yield lineno, b"\xff" + b"TOOLONG"
            continue
        yield lineno, raw


def read_jsonl(fh: BinaryIO, limits: Limits, *, endpoint: str | None = None) -> Iterator[NewRequest]:
    """The file's lines as requests; ``endpoint`` (an API batch's): every line must name it."""
    seen: dict[str, int] = {}
    seq = 0
    sniff_text(fh.peek(8192)[:8192] if hasattr(fh, "peek") else b"")
    for lineno, raw in _lines(fh, limits):
        if raw == b"\xffTOOLONG":
            err: LineError | None = LineError(
                f"line longer than {limits.max_line_bytes:,} bytes (limits.max_line_bytes)",
                line=lineno,
                code="line_too_long",
            )
            body, cid = None, None
        else:
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.strip():
                continue
            body, cid, err = _validate_line(raw, lineno, seen, limits, endpoint)
        seq += 1
        url = stored(body.pop("__url__")) if body is not None else None
        yield NewRequest(
            seq=seq, line=lineno, custom_id=cid, body=body, error=err.as_record() if err else None, url=url
        )


def _validate_line(
    raw: bytes, lineno: int, seen: dict[str, int], limits: Limits, endpoint: str | None = None
) -> tuple[dict[str, Any] | None, str | None, LineError | None]:
    """The line's body (with its url under ``__url__``, taken off by the caller), custom_id, or error."""

    def bad(msg: str, code: str, cid: str | None = None) -> tuple[None, str | None, LineError]:
        return None, cid, LineError(msg, line=lineno, code=code)

    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return bad(f"invalid JSON: {exc}", "invalid_json")
    if not isinstance(obj, dict):
        return bad(f"line is JSON {type(obj).__name__}, expected an object", "invalid_line")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid.strip():
        return bad(
            "custom_id is missing or not a non-empty string",
            "invalid_custom_id",
            None if cid is None else str(cid)[:MAX_CUSTOM_ID],
        )
    if len(cid) > MAX_CUSTOM_ID:
        return bad(f"custom_id longer than {MAX_CUSTOM_ID} characters", "invalid_custom_id", cid[:MAX_CUSTOM_ID])
    if cid in seen:
        return bad(f"duplicate custom_id {cid!r} (first on line {seen[cid]})", "duplicate_custom_id", cid)
    seen[cid] = lineno
    if obj.get("method", "POST") != "POST":
        return bad(f"method must be POST, got {obj.get('method')!r}", "invalid_method", cid)
    url = obj.get("url", CHAT_URL)
    if url not in Endpoint._value2member_map_:
        urls = ", ".join(e.value for e in Endpoint)
        return bad(f"url must be one of {urls}; got {str(url)[:200]!r}", "invalid_url", cid)
    if endpoint is not None and url != endpoint:
        return bad(f"url {url} does not match the batch's endpoint {endpoint}", "endpoint_mismatch", cid)
    body = obj.get("body")
    if not isinstance(body, dict):
        return bad("body is missing or not an object", "invalid_body", cid)
    if url != Endpoint.CHAT:
        problem = CHECKS[Endpoint(url)](body)
        if problem:
            return bad(problem, "invalid_body", cid)
    else:
        problem = check_messages(body.get("messages"), limits)
        if problem:
            return bad(problem, "invalid_messages", cid)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        return bad("body.model must be a string", "invalid_body", cid)
    if limits.allowed_models and model is not None and model not in limits.allowed_models:
        return bad(f"model {model!r} is not in backend.allowed_models", "model_not_allowed", cid)
    for key in ("stream", "n", "functions", "function_call"):
        if body.get(key) not in (None, False, 1):
            return bad(f"body.{key} is not supported in a batch", "invalid_body", cid)
    problem = check_tools(body.get("tools"), body.get("tool_choice"))
    if problem:
        return bad(problem, "invalid_tools", cid)
    return {**body, "__url__": url}, cid, None


def check_tools(tools: Any, tool_choice: Any) -> str | None:
    """OpenAI's ``tools`` (functions with a name) and ``tool_choice``; None when both are well formed."""
    if tools is None:
        return None if tool_choice is None else "body.tool_choice is given without body.tools"
    if not isinstance(tools, list):
        return "body.tools must be a list"
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            return f'body.tools[{i}].type must be "function"'
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            return f"body.tools[{i}].function.name is missing"
    if tool_choice in (None, "none", "auto", "required"):
        return None
    if isinstance(tool_choice, dict) and isinstance((tool_choice.get("function") or {}).get("name"), str):
        return None
    return 'body.tool_choice must be "none", "auto", "required" or {"type": "function", ...}'


def check_messages(messages: Any, limits: Limits | None = None) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "body.messages must be a non-empty list"
    images = 0
    max_bytes, cap = (
        (limits.max_image_bytes, limits.max_images) if limits else (Limits.max_image_bytes, Limits.max_images)
    )
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"body.messages[{i}] is not an object"
        if m.get("role") not in ROLES:
            return f"body.messages[{i}].role {m.get('role')!r} is not one of {sorted(ROLES)}"
        if m["role"] == "tool" and not isinstance(m.get("tool_call_id"), str):
            return f"body.messages[{i}]: a tool message needs its tool_call_id"
        calls = m.get("tool_calls")
        if calls is not None and (m["role"] != "assistant" or not isinstance(calls, list)):
            return f"body.messages[{i}].tool_calls must be a list on an assistant message"
        content = m.get("content")
        if content is None and calls:
            continue  # an assistant turn that only calls tools
        if isinstance(content, list):
            for j, part in enumerate(content):
                where = f"body.messages[{i}].content[{j}]"
                if isinstance(part, dict) and part.get("type") == "image_url":
                    images += 1
                    problem = check_image(part.get("image_url"), max_bytes)
                    if problem:
                        return f"{where}: {problem}"
                elif not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    return f"{where}: only text and image_url parts are supported"
        elif not isinstance(content, str):
            return f"body.messages[{i}].content must be a string"
    if images > cap:
        return f"body.messages hold {images} images; at most {cap} (limits.max_images_per_request)"
    return None


def _unreadable_rest(seq: int, line: int, problem: str, code: str) -> NewRequest:
    """The one error record for a CSV that cannot be read past ``line``: it and the rows after it."""
    error = LineError(f"{problem}; rows after it were not read", line=line, code=code)
    return NewRequest(seq=seq, line=line, custom_id=None, body=None, error=error.as_record())


class LineTooLong(Exception):
    """A CSV line longer than ``limits.max_line_bytes``: never read whole."""


def _text_lines(fh: BinaryIO, limit: int) -> Iterator[str]:
    """The file's lines as text for ``csv.reader`` (ends kept; ``\\r``, ``\\n`` and ``\\r\\n`` end a line),
    each read with at most ``limit`` bytes in memory: a longer line raises ``LineTooLong``."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    while raw := fh.readline(limit + 1):
        if len(raw) > limit and not raw.endswith(b"\n"):
            raise LineTooLong(f"a line longer than {limit:,} bytes (limits.max_line_bytes)")
        for piece in raw.splitlines(keepends=True):
            yield decoder.decode(piece)
    decoder.decode(b"", final=True)


def read_csv(fh: BinaryIO, pipeline: Pipeline, limits: Limits) -> tuple[list[str], Iterator[NewRequest]]:
    """Returns the header and a generator of rows rendered through the pipeline."""
    head = fh.peek(8192)[:8192] if hasattr(fh, "peek") else b""
    sniff_text(head)
    text = _text_lines(fh, limits.max_line_bytes)
    csv.field_size_limit(limits.max_line_bytes)
    # strict: a stray quote is an error at its line, not a silent merge of the rows after it
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError("file is empty", code="empty_file") from None
    except (csv.Error, UnicodeDecodeError, LineTooLong) as exc:
        raise InputError(f"cannot read the CSV header: {exc}", code="invalid_csv") from exc
    header = [h.strip() for h in header]
    if not any(header):
        raise InputError("the first line (header) is empty", code="invalid_csv")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"duplicate column name(s) in header: {', '.join(dupes)}", code="invalid_csv")
    try:
        pipeline.check_columns(header)
    except ConfigError as exc:
        raise InputError(exc.message, code="pipeline_mismatch") from exc
    return header, _csv_rows(reader, header, pipeline, limits)


def _csv_rows(reader: Any, header: list[str], pipeline: Pipeline, limits: Limits) -> Iterator[NewRequest]:
    seen: dict[str, int] = {}
    seq = 0
    width = len(header)
    # Hoisted out of the loop: this runs once per row of a 170,000-row file.
    id_column = pipeline.id_column
    passthrough = pipeline.passthrough_columns
    # Only the values the message uses are journaled (all of them when there is no template).
    used = template_fields(pipeline.user_template) if pipeline.user_template is not None else None
    embed = pipeline.task == "embed"
    render = pipeline.render_input if embed else pipeline.render_user
    url = Endpoint.EMBEDDINGS.value if embed else None
    max_lines = limits.max_lines
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            yield _unreadable_rest(seq + 1, start, f"not UTF-8 text: {exc.reason}", "not_utf8")
            return
        except LineTooLong as exc:
            yield _unreadable_rest(seq + 1, start, str(exc), "line_too_long")
            return
        except csv.Error as exc:
            if "field limit" in str(exc):
                problem = f"a cell longer than {limits.max_line_bytes:,} bytes (limits.max_line_bytes)"
                yield _unreadable_rest(seq + 1, start, problem, "line_too_long")
            else:
                yield _unreadable_rest(seq + 1, start, f"CSV syntax error ({exc}); unbalanced quote?", "invalid_csv")
            return
        if reader.line_num > max_lines:
            raise InputError(f"more than {max_lines:,} lines (limits.max_lines)", code="too_many_lines")
        if not values or all(not v.strip() for v in values):
            continue
        seq += 1
        row = dict(zip(header, values))
        given = (row.get(id_column) or "").strip() if id_column else ""
        custom_id = given or f"row-{seq}"
        error: LineError | None = None
        if len(values) != width:
            what = "missing" if len(values) < width else "extra"
            error = LineError(
                f"row has {len(values)} fields, header has {width} ({what} columns)", line=start, code="invalid_row"
            )
        elif id_column and not given:
            error = LineError(f"empty id column {id_column!r}", line=start, code="invalid_custom_id")
        elif id_column and custom_id in seen:
            error = LineError(
                f"duplicate id {custom_id!r} (first on line {seen[custom_id]})", line=start, code="duplicate_custom_id"
            )
        elif embed and not (text := render(row)):
            error = LineError("nothing to embed (empty input)", line=start, code="invalid_row")
        if error is not None:
            yield NewRequest(seq=seq, line=start, custom_id=custom_id, body=None, error=error.as_record())
            continue
        if id_column:  # row-<seq> ids are unique by construction: a million of them need no memory
            seen[custom_id] = start
        keep = {c: row.get(c, "") for c in passthrough} if passthrough else None
        if embed:
            yield NewRequest(seq=seq, line=start, custom_id=custom_id, body={"input": text}, row=keep, url=url)
            continue
        body = {VALUES_KEY: row if used is None else {f: row[f] for f in used}}
        yield NewRequest(seq=seq, line=start, custom_id=custom_id, body=body, row=keep)


def batch_line(custom_id: str, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT_URL, "body": body}) + b"\n"
