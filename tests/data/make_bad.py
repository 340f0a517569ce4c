#!/usr/bin/env python3
"""The hostile-inbox corpus: broken, odd and malicious files for batchd's inbox.

Every case is one entry of ``CASES`` below: the file's bytes (or how to create
it), where it goes in the inbox and what the daemon must do with it. From that
one table come

* the checked-in regular files under ``tests/data/bad/`` (should succeed:
  ``tests/data/bad/accepted/``),
* ``tests/data/bad/expectations.toml`` and ``tests/data/bad/README.md``,
* the files that cannot live in git (symlinks, FIFO, a directory named
  ``x.csv``, an unreadable file, odd file names, the multi-megabyte files),
  made on demand by :func:`make_special`.

Usage from a test::

    from tests.data import make_bad          # or load it by path
    staging = tmp_path / "staging"; staging.mkdir()
    make_bad.install_pipeline(inbox)         # inbox/candidates/pipeline.toml + rubric.md
    for p in make_bad.make_all(staging):     # everything, laid out like an inbox
        exp = make_bad.expectation_for(p, staging)
        dest = inbox / p.relative_to(staging)
        os.rename(p, dest)                   # one by one, same filesystem
        ...wait for the outcome and compare with exp...

Command line::

    python3 tests/data/make_bad.py --rebuild   # rewrite the checked-in files, README, expectations
    python3 tests/data/make_bad.py --check     # exit 1 if they are out of date
    python3 tests/data/make_bad.py DIR         # make_all(DIR): the whole corpus into DIR

Pure standard library; everything is deterministic.
"""

import argparse
import csv
import gzip
import io
import json
import os
import pathlib
import random
import shutil
import struct
import sys
import tomllib
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

HERE = pathlib.Path(__file__).resolve().parent
BAD = HERE / "bad"
ACCEPTED = BAD / "accepted"
REPO = HERE.parent.parent
EXAMPLE_PIPELINE = REPO / "inbox.example" / "candidates"
CSV_SUBDIR = "candidates"  # CSV cases go to inbox/candidates/ (the example pipeline)
EXPECTATIONS = BAD / "expectations.toml"
README = BAD / "README.md"
OUTCOMES = ("accepted", "partial", "rejected", "ignored")
MODEL = "gemma3:4b"

COLUMNS = ["candidate_id", "name", "location", "current_title", "years_experience", "skills", "summary"]
ROWS = [
    [
        "C9001",
        "Zoë Tester",
        "Berlin, Germany",
        "Data Engineer",
        "6",
        "Python, SQL, Airflow",
        'Builds "reliable" pipelines, mostly batch.',
    ],
    ["C9002", "José Ejemplo", "Remote (EU)", "Data Analyst", "2", "SQL, Excel", "Dashboards only."],
    [
        "C9003",
        "田中 太郎",
        "Tokyo, Japan",
        "Senior Data Engineer",
        "10",
        "Python, Spark, Kafka",
        "Ten years of streaming and batch pipelines.",
    ],
]
# Same rows, Latin-1 encodable (for the wrong-encoding cases).
ROWS_LATIN1 = [
    [
        "C9001",
        "Zoë Tester",
        "Berlin, Germany",
        "Data Engineer",
        "6",
        "Python, SQL, Airflow",
        "Café-grade pipelines, très fiable.",
    ],
    ["C9002", "José Ejemplo", "Málaga, Spain", "Data Analyst", "2", "SQL, Excel", "Dashboards only."],
    [
        "C9003",
        "Søren Åberg",
        "Århus, Denmark",
        "Senior Data Engineer",
        "10",
        "Python, Spark, Kafka",
        "Ten years of pipelines.",
    ],
]


# --------------------------------------------------------------------------- builders


def req(cid, content: str = "Reply with the single word OK.", **top) -> dict:
    """A valid batch request line; keyword args replace or drop (None) top-level keys."""
    d = {
        "custom_id": cid,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8},
    }
    for k, v in top.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def body(**over) -> dict:
    b = {"model": MODEL, "messages": [{"role": "user", "content": "Reply OK."}], "max_tokens": 8}
    for k, v in over.items():
        if v is None:
            b.pop(k, None)
        else:
            b[k] = v
    return b


def jl(*objs, sep: str = "\n", end: str = "\n") -> bytes:
    return (sep.join(json.dumps(o, ensure_ascii=False) for o in objs) + end).encode()


def good_jsonl(prefix: str = "ok", n: int = 3) -> bytes:
    return jl(*(req(f"{prefix}-{i}") for i in range(1, n + 1)))


def csv_text(rows=ROWS, header=COLUMNS, lineterminator: str = "\n", delimiter: str = ",") -> str:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator=lineterminator, delimiter=delimiter)
    if header is not None:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def rows_tagged(tag: str) -> list:
    """ROWS with ids prefixed by tag: same shape, different bytes (identical files are duplicates)."""
    return [[f"{tag}-{r[0]}", *r[1:]] for r in ROWS]


def csv_bytes(*a, **k) -> bytes:
    return csv_text(*a, **k).encode("utf-8")


def png_bytes() -> bytes:
    """A real 4x4 RGB PNG (stored deflate blocks, so the bytes never change)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(
        b"\x00" + bytes(v for x in range(4) for v in (x * 60, y * 60, 200)) for y in range(4)
    )  # filter byte 0, then 4 RGB pixels per row
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b"")


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED  # deterministic bytes
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    return buf.getvalue()


def xlsx_bytes() -> bytes:
    ct = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        "</Types>"
    )
    rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/>'
        "</Relationships>"
    )
    wb = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
        '<sheets><sheet name="candidates" sheetId="1" r:id="rId1"/></sheets></workbook>'
    )
    wbrels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>'
        "</Relationships>"
    )
    cells = "".join(f'<c t="inlineStr"><is><t>{c}</t></is></c>' for c in COLUMNS)
    sheet = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        f'<sheetData><row r="1">{cells}</row></sheetData></worksheet>'
    )
    return _zip(
        [
            ("[Content_Types].xml", ct.encode()),
            ("_rels/.rels", rels.encode()),
            ("xl/workbook.xml", wb.encode()),
            ("xl/_rels/workbook.xml.rels", wbrels.encode()),
            ("xl/worksheets/sheet1.xml", sheet.encode()),
        ]
    )


def pdf_bytes() -> bytes:
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        None,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    stream = b"BT /F1 12 Tf 20 50 Td (candidate_id,name,summary) Tj ET"
    objs[3] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def parquet_bytes() -> bytes:
    rng = random.Random(1234)
    return b"PAR1" + bytes(rng.randrange(256) for _ in range(2048)) + b"PAR1"


def html_bytes() -> bytes:
    return (
        b'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
        b"<title>Sign in - Intranet</title></head>\n<body>\n"
        b'<h1>Session expired</h1>\n<p>Please <a href="/login">sign in</a> '
        b"to download candidates.csv.</p>\n<table><tr><td>candidate_id</td>"
        b"<td>name</td></tr></table>\n</body>\n</html>\n"
    )


def wide_csv() -> bytes:
    extra = [f"extra_{i:04d}" for i in range(1, 2000 - len(COLUMNS) + 1)]
    rows = [r + [f"v{i}" for i in range(len(extra))] for r in ROWS]
    return csv_bytes(rows, header=COLUMNS + extra)


def mixed_good_bad() -> bytes:
    lines = []
    for n in range(1, 13):
        if n == 3:
            lines.append('{"custom_id": "mix-3", "method": "POST", "url": "/v1/chat/compl')
        elif n == 6:
            lines.append(json.dumps(req("mix-6", custom_id=None)))
        elif n == 9:
            lines.append(json.dumps(req("mix-1")))  # duplicate of line 1
        elif n == 12:
            r = req("mix-12")
            r["body"]["messages"][0]["role"] = "hacker"
            lines.append(json.dumps(r))
        else:
            lines.append(json.dumps(req(f"mix-{n}")))
    return ("\n".join(lines) + "\n").encode()


def with_role(cid, role):
    r = req(cid)
    r["body"]["messages"][0]["role"] = role
    return r


def with_content(cid, content):
    r = req(cid)
    r["body"]["messages"][0]["content"] = content
    return r


# --------------------------------------------------------------------------- the table


@dataclass
class Case:
    label: str  # file name in the inbox (escaped, see label_for(), if odd)
    outcome: str  # what a good implementation does
    reason: str  # lowercase substring expected in the error text
    what: str  # what is wrong with it, one line
    data: bytes | Callable[[], bytes] | None = None  # checked-in file content
    special: Callable[[pathlib.Path], pathlib.Path] | None = None  # generated: creates, returns path
    also_ok: tuple[str, ...] = ()
    also_ok_as_root: tuple[str, ...] = ()
    reason_any: tuple[str, ...] = ()
    results: int | None = None
    error_lines: tuple[int, ...] | None = None
    subdir: str | None = None  # None: CSV_SUBDIR for *.csv (any case), else inbox root
    mode: int = 0o644
    exact: bool = True  # checked-in bytes must match the builder exactly (--check)

    @property
    def generated(self) -> bool:
        return self.special is not None

    @property
    def folder(self) -> pathlib.Path:
        """Where a checked-in case lives: bad/accepted/ for sure successes, else bad/."""
        return ACCEPTED if (self.outcome == "accepted" and not self.also_ok) else BAD

    @property
    def where(self) -> str:
        if self.subdir is not None:
            return self.subdir
        return CSV_SUBDIR if self.label.lower().endswith(".csv") else ""

    @property
    def source(self) -> str:
        if self.generated:
            return "generated"
        return (self.folder / self.label).relative_to(HERE).as_posix()

    def content(self) -> bytes:
        return self.data() if callable(self.data) else self.data


R, P, A, I = "rejected", "partial", "accepted", "ignored"
BIN = ("utf", "binary", "encoding", "decode")
UNSUP = ("extension", "type", "supported")
LINK = ("link",)

CASES: list[Case] = [
    # ---- empty and encoding --------------------------------------------------------
    Case("empty.csv", R, "empty", "zero bytes", b""),
    Case("empty.jsonl", R, "empty", "zero bytes", b""),
    Case("header_only.csv", R, "rows", "header line, no data rows", csv_bytes([]), reason_any=("empty", "no data")),
    Case(
        "csv_only_newlines.csv",
        R,
        "empty",
        "twenty bare newlines, no header",
        b"\n" * 20,
        reason_any=("rows", "header", "column"),
    ),
    Case(
        "latin1.csv",
        R,
        "utf",
        "valid CSV encoded as Latin-1 (é = 0xE9), not UTF-8",
        csv_text(ROWS_LATIN1).encode("latin-1"),
        reason_any=("encoding", "decode"),
    ),
    Case(
        "utf16.csv",
        R,
        "utf",
        "valid CSV encoded as UTF-16 with BOM",
        csv_text().encode("utf-16"),
        reason_any=("encoding", "binary", "nul"),
    ),
    Case(
        "utf16_nobom.csv",
        R,
        "utf",
        "valid CSV encoded as UTF-16-LE, no BOM (NUL every other byte)",
        csv_text().encode("utf-16-le"),
        reason_any=("encoding", "binary", "nul"),
    ),
    Case(
        "nul_bytes.csv",
        R,
        "nul",
        "valid CSV with NUL bytes inside a field",
        csv_bytes([ROWS[0], ROWS[1][:6] + ["Dash\x00boards\x00only."], ROWS[2]]),
        also_ok=(P,),
        reason_any=("binary", "control", "\\x00", "0x00"),
    ),
    Case(
        "nul_bytes.jsonl",
        P,
        "json",
        "line 2 holds raw NUL bytes inside a string",
        jl(req("nul-1")) + b'{"custom_id": "nul-2", "method": "POST", "url": '
        b'"/v1/chat/completions", "body": {"model": "gemma3:4b", "messages": '
        b'[{"role": "user", "content": "a\x00b\x00c"}]}}\n' + jl(req("nul-3")),
        also_ok=(R,),
        reason_any=("nul", "binary", "control"),
        results=2,
        error_lines=(2,),
    ),
    Case(
        "bad_utf8_line.jsonl",
        P,
        "utf",
        "line 2 contains bytes that are not UTF-8",
        jl(req("u8-1")) + b'{"custom_id": "u8-2", "method": "POST", "url": '
        b'"/v1/chat/completions", "body": {"model": "gemma3:4b", "messages": '
        b'[{"role": "user", "content": "caf\xe9 \xff\xfe"}]}}\n' + jl(req("u8-3")),
        also_ok=(R,),
        reason_any=("encoding", "decode", "binary"),
        results=2,
        error_lines=(2,),
    ),
    Case(
        "surrogate.jsonl",
        P,
        "surrogate",
        'line 2 is valid JSON but its content is a lone surrogate "\\ud800" (cannot be encoded)',
        jl(req("sur-1")) + b'{"custom_id": "sur-2", "method": "POST", "url": '
        b'"/v1/chat/completions", "body": {"model": "gemma3:4b", "messages": '
        b'[{"role": "user", "content": "bad \\ud800 half"}]}}\n' + jl(req("sur-3")),
        also_ok=(A,),
        reason_any=("unicode", "utf", "encod"),
        results=2,
        error_lines=(2,),
    ),
    Case(
        "control_chars_raw.csv",
        A,
        "control",
        "raw ESC, BEL, backspace and DEL bytes inside CSV fields (still UTF-8)",
        csv_bytes([ROWS[0][:6] + ["\x1b[31mred\x1b[0m text\x07 with\x08 bell\x7f"], ROWS[1], ROWS[2]]),
        also_ok=(R,),
        reason_any=("binary",),
        results=3,
    ),
    # ---- binary content under a text name ----------------------------------------------
    Case(
        "png_named.csv",
        R,
        "binary",
        "real PNG image bytes named .csv",
        png_bytes,
        reason_any=BIN[:1] + ("png", "image"),
    ),
    Case(
        "gzip_named.jsonl",
        R,
        "binary",
        "gzip-compressed JSONL named .jsonl",
        lambda: gzip.compress(good_jsonl("gz"), compresslevel=9, mtime=0),
        reason_any=("utf", "gzip", "compress", "json"),
        exact=False,
    ),
    Case(
        "zip_named.csv",
        R,
        "binary",
        "a zip archive holding a CSV, named .csv",
        lambda: _zip([("candidates.csv", csv_bytes())]),
        reason_any=("utf", "zip", "compress", "nul"),
    ),
    Case(
        "xlsx_named.csv",
        R,
        "binary",
        "an Excel .xlsx workbook (a zip) saved as .csv",
        xlsx_bytes,
        reason_any=("utf", "zip", "excel", "xlsx", "nul"),
    ),
    # ---- unsupported extensions ---------------------------------------------------------
    Case("pdf.pdf", R, "unsupported", "a PDF document", pdf_bytes, reason_any=UNSUP),
    Case("image.png", R, "unsupported", "a PNG image", png_bytes, reason_any=UNSUP),
    Case(
        "data.parquet",
        R,
        "unsupported",
        "random bytes framed by the parquet magic PAR1",
        parquet_bytes,
        reason_any=UNSUP,
    ),
    Case(
        "run.sh",
        R,
        "unsupported",
        "an executable shell script (must never be run)",
        b"#!/bin/sh\n# batchd must never execute inbox files\necho pwned > /tmp/batchd-pwned\n",
        reason_any=UNSUP,
        mode=0o755,
    ),
    Case(
        "UPPER_EXT.CSV",
        A,
        "extension",
        "valid CSV with an upper-case .CSV extension",
        csv_bytes(),
        also_ok=(R,),
        reason_any=("type", "supported"),
        results=3,
    ),
    # ---- CSV structure ------------------------------------------------------------------
    Case(
        "unbalanced_quotes.csv",
        R,
        "quote",
        "row 2 opens a quoted field that never closes (swallows the rest of the file)",
        csv_bytes([ROWS[0]])
        + 'C9002,"José Ejemplo,Remote (EU),Data Analyst,2,SQL,Dashboards only.\n'.encode()
        + csv_bytes([ROWS[2]], header=None),
        also_ok=(P,),
        reason_any=("csv", "parse", "end of data"),
    ),
    Case(
        "csv_missing_columns.csv",
        R,
        "column",
        "lacks the skills, summary and years_experience columns the template needs",
        csv_bytes([r[:2] + [r[3]] for r in ROWS], header=["candidate_id", "name", "current_title"]),
        reason_any=("missing", "skills", "summary"),
    ),
    Case(
        "jsonl_named.csv",
        R,
        "column",
        "JSONL content in a .csv file",
        good_jsonl("jc"),
        reason_any=("missing", "header", "csv"),
    ),
    Case(
        "html_page.csv",
        R,
        "column",
        "an HTML login page saved as .csv",
        html_bytes,
        reason_any=("missing", "html", "header"),
    ),
    Case(
        "semicolon_delimited.csv",
        R,
        "column",
        "European Excel export: ';' as delimiter, so the header is one column",
        csv_bytes(delimiter=";"),
        also_ok=(A,),
        reason_any=("delimiter", "missing"),
    ),
    Case(
        "duplicate_header.csv",
        R,
        "duplicate",
        "the header names the column 'summary' twice",
        csv_bytes([r + ["second summary"] for r in ROWS], header=COLUMNS + ["summary"]),
        also_ok=(A,),
        reason_any=("column", "header"),
    ),
    Case(
        "csv_duplicate_ids.csv",
        P,
        "duplicate",
        "row 4 repeats candidate_id C9001",
        csv_bytes(ROWS + [ROWS[0][:6] + ["Same id again."]]),
        reason_any=("c9001", "id"),
        results=3,
    ),
    Case(
        "very_wide.csv",
        A,
        "column",
        "2,000 columns (the 7 needed plus 1,993 extra), 3 rows",
        wide_csv,
        also_ok=(R,),
        reason_any=("wide", "too many", "limit", "large"),
    ),
    # ---- JSON shape ---------------------------------------------------------------------
    Case(
        "json_array.jsonl",
        R,
        "object",
        "one line holding a JSON array of two valid requests",
        jl([req("arr-1"), req("arr-2")]),
        reason_any=("array", "list", "json"),
    ),
    Case(
        "json_string.jsonl",
        R,
        "object",
        "each line is a JSON string",
        b'"hello"\n"world"\n',
        reason_any=("json", "string"),
    ),
    Case(
        "json_number_lines.jsonl",
        R,
        "object",
        "each line is a JSON number",
        b"1\n2\n3\n",
        reason_any=("json", "number"),
    ),
    Case(
        "pretty_printed.jsonl",
        R,
        "json",
        "one valid request pretty-printed over many lines",
        (json.dumps(req("pretty-1"), indent=2) + "\n").encode(),
        reason_any=("line",),
    ),
    Case("csv_named.jsonl", R, "json", "CSV content in a .jsonl file", csv_bytes(), reason_any=("line", "object")),
    Case(
        "truncated_last_line.jsonl",
        P,
        "json",
        "4 good lines, then line 5 cut mid-JSON (no newline)",
        good_jsonl("tr", 4) + b'{"custom_id": "tr-5", "method": "POST", "url": "/v1/chat/comp',
        reason_any=("truncat", "line", "decode"),
        results=4,
        error_lines=(5,),
    ),
    Case(
        "mixed_good_bad.jsonl",
        P,
        "json",
        "12 lines, 8 good; bad: 3 cut JSON, 6 no custom_id, 9 duplicate custom_id, 12 bad role",
        mixed_good_bad,
        reason_any=("custom_id", "duplicate", "role"),
        results=8,
        error_lines=(3, 6, 9, 12),
    ),
    Case(
        "nan_values.jsonl",
        P,
        "nan",
        'line 2 has "temperature": NaN (not valid JSON)',
        jl(req("nan-1")) + b'{"custom_id": "nan-2", "method": "POST", "url": '
        b'"/v1/chat/completions", "body": {"model": "gemma3:4b", "messages": '
        b'[{"role": "user", "content": "Reply OK."}], "temperature": NaN}}\n' + jl(req("nan-3")),
        also_ok=(A,),
        reason_any=("json", "number", "finite", "temperature"),
        results=2,
        error_lines=(2,),
    ),
    # ---- custom_id ----------------------------------------------------------------------
    Case(
        "custom_id_number.jsonl",
        R,
        "custom_id",
        "custom_id is a number, not a string",
        jl(req(1), req(2)),
        reason_any=("string",),
    ),
    Case(
        "custom_id_missing.jsonl",
        P,
        "custom_id",
        "line 2 has no custom_id",
        jl(req("cm-1"), req("cm-2", custom_id=None), req("cm-3")),
        reason_any=("missing", "required"),
        results=2,
        error_lines=(2,),
    ),
    Case(
        "custom_id_duplicate.jsonl",
        P,
        "duplicate",
        "lines 4 and 5 repeat the ids of lines 1 and 2",
        jl(req("dup-a"), req("dup-b"), req("dup-c"), req("dup-a"), req("dup-b")),
        reason_any=("custom_id",),
        results=3,
        error_lines=(4, 5),
    ),
    Case(
        "custom_id_10kb.jsonl",
        P,
        "custom_id",
        "line 2's custom_id is 10,240 characters",
        jl(req("long-1"), req("L" * 10240), req("long-3")),
        reason_any=("long", "length", "too"),
        results=2,
        error_lines=(2,),
    ),
    # ---- request fields -----------------------------------------------------------------
    Case(
        "url_audio.jsonl",
        R,
        "url",
        "url is /v1/audio/transcriptions (an endpoint batchd does not run)",
        jl(
            req("aud-1", url="/v1/audio/transcriptions", body={"model": MODEL, "file": "a.wav"}),
            req("aud-2", url="/v1/audio/transcriptions", body={"model": MODEL, "file": "b.wav"}),
        ),
        reason_any=("endpoint", "transcriptions", "one of"),
    ),
    Case(
        "url_absolute.jsonl",
        R,
        "url",
        "url is http://evil.example/v1/chat/completions (SSRF)",
        jl(
            req("abs-1", url="http://evil.example/v1/chat/completions"),
            req("abs-2", url="http://evil.example/v1/chat/completions"),
        ),
        reason_any=("endpoint", "supported"),
    ),
    Case(
        "method_get.jsonl",
        R,
        "method",
        "method is GET",
        jl(req("get-1", method="GET"), req("get-2", method="GET")),
        reason_any=("post",),
    ),
    Case(
        "body_missing.jsonl",
        R,
        "body",
        "no body",
        jl(req("nb-1", body=None), req("nb-2", body=None)),
        reason_any=("missing", "required"),
    ),
    Case(
        "body_not_object.jsonl",
        R,
        "body",
        "body is a string",
        jl(req("bs-1", body="hello"), req("bs-2", body="hello")),
        reason_any=("object",),
    ),
    Case(
        "messages_missing.jsonl",
        R,
        "messages",
        "body has no messages",
        jl(req("mm-1", body=body(messages=None)), req("mm-2", body=body(messages=None))),
    ),
    Case(
        "messages_not_list.jsonl",
        R,
        "messages",
        "messages is a string",
        jl(req("ms-1", body=body(messages="Hello")), req("ms-2", body=body(messages="Hello"))),
    ),
    Case(
        "messages_empty.jsonl",
        R,
        "messages",
        "messages is []",
        jl(req("me-1", body=body(messages=[])), req("me-2", body=body(messages=[]))),
    ),
    Case(
        "messages_bad_role.jsonl",
        R,
        "role",
        "a message with role 'hacker'",
        jl(with_role("role-1", "hacker"), with_role("role-2", "hacker")),
    ),
    Case(
        "message_content_number.jsonl",
        R,
        "content",
        "message content is the number 42",
        jl(with_content("num-1", 42), with_content("num-2", 42)),
    ),
    Case(
        "model_not_allowed.jsonl",
        R,
        "model",
        "model is 'evil-model' (not configured; a backend would answer 404)",
        jl(req("evil-1", body=body(model="evil-model")), req("evil-2", body=body(model="evil-model"))),
        reason_any=("not found", "allowed", "unknown"),
    ),
    # ---- accepted: odd but valid ----------------------------------------------------------
    Case(
        "bom_crlf.csv",
        A,
        "",
        "valid CSV with UTF-8 BOM and CRLF line endings (Excel export)",
        b"\xef\xbb\xbf" + csv_bytes(lineterminator="\r\n"),
        results=3,
    ),
    Case(
        "bom_crlf.jsonl",
        A,
        "",
        "valid JSONL with UTF-8 BOM and CRLF line endings",
        b"\xef\xbb\xbf" + jl(*(req(f"bc-{i}") for i in (1, 2, 3)), sep="\r\n", end="\r\n"),
        results=3,
    ),
    Case(
        "csv_extra_columns.csv",
        A,
        "",
        "valid CSV with two extra columns the template ignores",
        csv_bytes(
            [r + ["https://example.invalid/in/x", "note, with comma"] for r in ROWS],
            header=COLUMNS + ["linkedin_url", "notes"],
        ),
        results=3,
    ),
    Case(
        "csv_quoted_multiline.csv",
        A,
        "",
        "quoted fields with line breaks, commas and quotes",
        csv_bytes(
            [
                ROWS[0][:6] + ['Line one.\nLine two, with "quotes".\n\nLine four.'],
                ROWS[1][:6] + ["Ends with a newline\n"],
                ROWS[2],
            ]
        ),
        results=3,
    ),
    Case(
        "control_chars.jsonl",
        A,
        "",
        "JSON-escaped control/format characters in content (ESC, BEL, \\u202e, zero-width)",
        jl(
            with_content("cc-1", "\x1b[31mred\x1b[0m and a bell\x07"),
            with_content("cc-2", "right-to-left \u202eoverride\u202c and zero\u200bwidth"),
            with_content("cc-3", "tab\tand\rcarriage return\u0000nul escape"),
        ),
        results=3,
    ),
    Case(
        "no_trailing_newline.jsonl",
        A,
        "",
        "3 valid lines, the last without a newline",
        jl(*(req(f"nt-{i}") for i in (1, 2, 3)), end=""),
        results=3,
    ),
    Case(
        "blank_lines.jsonl",
        A,
        "",
        "3 valid lines with blank and whitespace-only lines between",
        b"\n" + jl(req("bl-1")) + b"\n   \n" + jl(req("bl-2")) + b"\t\n" + jl(req("bl-3")) + b"\n\n",
        results=3,
    ),
    Case(
        "hostile_custom_ids.jsonl",
        A,
        "",
        "valid requests whose custom_ids look like paths, SQL, HTML and shell",
        jl(
            req("../../etc/passwd"),
            req("'; DROP TABLE requests;--"),
            req("<script>alert(1)</script>"),
            req("$(touch /tmp/batchd-pwned)"),
            req("日本語/ü\\back"),
        ),
        results=5,
    ),
    Case("name with spaces.csv", A, "", "valid CSV, spaces in the file name", csv_bytes(rows_tagged("sp")), results=3),
    Case(
        "-leading-dash.csv",
        A,
        "",
        "valid CSV, name starts with '-' (looks like an option)",
        csv_bytes(rows_tagged("dash")),
        results=3,
    ),
    Case(
        "dots..in..name...csv", A, "", "valid CSV, runs of dots in the name", csv_bytes(rows_tagged("dots")), results=3
    ),
    Case("semi;colon's.jsonl", A, "", "valid JSONL, ';' and a quote in the name", good_jsonl("semi"), results=3),
    Case(
        "$(touch batchd-pwned).jsonl",
        A,
        "",
        "valid JSONL, shell command substitution in the name",
        good_jsonl("shell"),
        results=3,
    ),
    Case("unicode_名前_Zoë.jsonl", A, "", "valid JSONL, non-ASCII (UTF-8) file name", good_jsonl("uni"), results=3),
]


# --------------------------------------------------------------------------- special files


def _fresh(p: pathlib.Path) -> pathlib.Path:
    """Remove whatever is at p (file, link, FIFO or directory) so it can be recreated."""
    if p.is_symlink() or (p.exists() and not p.is_dir()):
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)
    return p


def _write(d: pathlib.Path, name: str | bytes, data: bytes, mode: int = 0o644) -> pathlib.Path:
    p = _fresh(d / (os.fsdecode(name) if isinstance(name, bytes) else name))
    p.write_bytes(data)
    os.chmod(p, mode)
    return p


def _symlink(d: pathlib.Path, name: str, target: str | pathlib.Path) -> pathlib.Path:
    p = _fresh(d / name)
    os.symlink(target, p)
    return p


def _link_to_valid(d: pathlib.Path) -> pathlib.Path:
    # The target is a hidden file (ignored by the watcher) beside the link, named absolutely
    # so that the link still points at it after being renamed into another folder.
    target = _write(d, ".link_target.jsonl", good_jsonl("tgt"))
    return _symlink(d, "link_to_valid.jsonl", target.resolve())


def _loop(name: str, other: str) -> Callable[[pathlib.Path], pathlib.Path]:
    return lambda d: _symlink(d, name, other)


def _fifo(d: pathlib.Path) -> pathlib.Path:
    p = _fresh(d / "fifo.jsonl")
    os.mkfifo(p, 0o644)
    return p


def _dir_named_csv(d: pathlib.Path) -> pathlib.Path:
    p = _fresh(d / "x.csv")
    p.mkdir()
    (p / "inner.csv").write_bytes(csv_bytes())
    return p


def _eadir(d: pathlib.Path) -> pathlib.Path:
    p = _fresh(d / "@eaDir")
    p.mkdir()
    (p / "requests.jsonl").write_bytes(good_jsonl("ea"))
    return p


def _million_lines(d: pathlib.Path) -> pathlib.Path:
    return _write(d, "million_lines.jsonl", b"{}\n" * 1_000_000)


def _one_line_5mb(d: pathlib.Path) -> pathlib.Path:
    # One syntactically valid request whose user message is ~5 MB; a single line.
    pad = "lorem ipsum " * (5 * 1024 * 1024 // 12)
    return _write(d, "one_line_5mb.jsonl", jl(with_content("huge-1", pad)))


def _deep_nesting(d: pathlib.Path) -> pathlib.Path:
    # Line 2 nests 100,000 arrays: json.loads raises RecursionError, not JSONDecodeError.
    depth = 100_000
    line2 = (
        '{"custom_id": "deep-2", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "gemma3:4b", "messages": [{"role": "user", "content": "hi"}], '
        '"metadata": ' + "[" * depth + "]" * depth + "}}\n"
    ).encode()
    return _write(d, "deep_nesting.jsonl", jl(req("deep-1")) + line2)


def _large_field(d: pathlib.Path) -> pathlib.Path:
    # Row 2's summary is 200,000 characters: over csv's default field_size_limit (131,072).
    rows = [ROWS[0], ROWS[1][:6] + ["x" * 200_000], ROWS[2]]
    return _write(d, "large_field.csv", csv_bytes(rows))


def _unreadable(d: pathlib.Path) -> pathlib.Path:
    return _write(d, "unreadable.jsonl", good_jsonl("unr"), mode=0o000)


LONG_NAME = "long_" + "n" * (255 - len("long_") - len(".jsonl")) + ".jsonl"  # 255 bytes
ODD = {  # label -> real file name (bytes) for the names that are not plain text
    "new\\x0aline.jsonl": b"new\nline.jsonl",
    "caf\\xe9_latin1.jsonl": b"caf\xe9_latin1.jsonl",
    "tab\\x09and\\x1bescape.jsonl": b"tab\tand\x1bescape.jsonl",
}


def _named(name: str | bytes, data: bytes | Callable[[], bytes]) -> Callable[[pathlib.Path], pathlib.Path]:
    return lambda d: _write(d, name, data() if callable(data) else data)


NAME_REASON = ("long", "invalid", "character")
SPECIAL_CASES: list[Case] = [
    Case(
        "shadow_link.csv",
        R,
        "symlink",
        "symlink to /etc/shadow",
        special=lambda d: _symlink(d, "shadow_link.csv", "/etc/shadow"),
        reason_any=LINK,
    ),
    Case(
        "passwd_link.jsonl",
        R,
        "symlink",
        "symlink to /etc/passwd",
        special=lambda d: _symlink(d, "passwd_link.jsonl", "/etc/passwd"),
        reason_any=LINK,
    ),
    Case(
        "link_to_valid.jsonl",
        R,
        "symlink",
        "symlink to a valid JSONL file (absolute path to a hidden file beside it)",
        special=_link_to_valid,
        reason_any=LINK,
    ),
    Case(
        "dangling_link.jsonl",
        R,
        "symlink",
        "symlink to a file that does not exist",
        special=lambda d: _symlink(d, "dangling_link.jsonl", "no-such-file.jsonl"),
        reason_any=LINK + ("exist", "not found"),
    ),
    Case(
        "dir_link.jsonl",
        R,
        "symlink",
        "symlink to the directory /",
        special=lambda d: _symlink(d, "dir_link.jsonl", "/"),
        reason_any=LINK + ("directory",),
    ),
    Case(
        "loop_a.csv",
        R,
        "symlink",
        "symlink loop: loop_a.csv -> loop_b.csv -> loop_a.csv",
        special=_loop("loop_a.csv", "loop_b.csv"),
        reason_any=LINK + ("loop",),
    ),
    Case(
        "loop_b.csv",
        R,
        "symlink",
        "symlink loop: loop_b.csv -> loop_a.csv",
        special=_loop("loop_b.csv", "loop_a.csv"),
        reason_any=LINK + ("loop",),
    ),
    Case(
        "fifo.jsonl",
        R,
        "regular",
        "a named pipe (FIFO): opening it for reading blocks forever",
        special=_fifo,
        reason_any=("fifo", "pipe", "not a file", "type", "special"),
    ),
    Case(
        "x.csv",
        R,
        "directory",
        "a directory named x.csv (holding a valid inner.csv)",
        special=_dir_named_csv,
        subdir="",
        also_ok=(I,),
        reason_any=("regular", "not a file"),
    ),
    Case(
        "unreadable.jsonl",
        R,
        "permission",
        "valid JSONL with mode 000 (root can still read it)",
        special=_unreadable,
        also_ok_as_root=(A,),
        reason_any=("denied", "read", "access"),
        results=3,
    ),
    Case(
        "new\\x0aline.jsonl",
        A,
        "name",
        "valid JSONL, a newline inside the file name",
        special=_named(ODD["new\\x0aline.jsonl"], lambda: good_jsonl("nl")),
        also_ok=(R,),
        reason_any=NAME_REASON,
        results=3,
    ),
    Case(
        "caf\\xe9_latin1.jsonl",
        A,
        "name",
        "valid JSONL, file name bytes are Latin-1, not UTF-8",
        special=_named(ODD["caf\\xe9_latin1.jsonl"], lambda: good_jsonl("l1")),
        also_ok=(R,),
        reason_any=NAME_REASON + ("utf", "encod"),
        results=3,
    ),
    Case(
        "tab\\x09and\\x1bescape.jsonl",
        A,
        "name",
        "valid JSONL, TAB and ESC in the file name",
        special=_named(ODD["tab\\x09and\\x1bescape.jsonl"], lambda: good_jsonl("esc")),
        also_ok=(R,),
        reason_any=NAME_REASON + ("control",),
        results=3,
    ),
    Case(
        "rtl_\u202egnp.jsonl",
        A,
        "name",
        "valid JSONL, a right-to-left override (U+202E) in the name (shows as 'rtl_lnosj.png')",
        special=_named("rtl_\u202egnp.jsonl", lambda: good_jsonl("rtl")),
        also_ok=(R,),
        reason_any=NAME_REASON,
        results=3,
    ),
    Case(
        LONG_NAME,
        A,
        "name",
        "valid JSONL with a 255-byte name (the longest allowed; '.<stem>.partial' would not fit)",
        special=_named(LONG_NAME, lambda: good_jsonl("ln")),
        also_ok=(R,),
        reason_any=NAME_REASON,
        results=3,
    ),
    Case(
        "million_lines.jsonl",
        R,
        "custom_id",
        "1,000,000 lines of '{}' (3 MB, every line invalid)",
        special=_million_lines,
        reason_any=("lines", "limit", "too many", "large", "size", "missing"),
    ),
    Case(
        "one_line_5mb.jsonl",
        R,
        "long",
        "one valid request line of 5 MB (a single huge message)",
        special=_one_line_5mb,
        reason_any=("large", "size", "limit", "context", "line", "too", "exceed"),
    ),
    Case(
        "deep_nesting.jsonl",
        P,
        "json",
        "line 2 nests 100,000 JSON arrays (RecursionError bait)",
        special=_deep_nesting,
        reason_any=("nest", "deep", "recursion", "depth"),
        results=1,
        error_lines=(2,),
    ),
    Case(
        "large_field.csv",
        P,
        "field",
        "row 2 has a 200,000-character summary (csv field limit is 131,072)",
        special=_large_field,
        also_ok=(R,),
        reason_any=("large", "long", "limit", "size", "context", "exceed"),
        results=2,
    ),
    # ---- ignored: never touched, no outbox record ------------------------------------------
    Case(
        "..dots...csv",
        I,
        "",
        "valid CSV, but the name starts with '.', so it is hidden",
        special=_named("..dots...csv", csv_bytes),
    ),
    Case(".hidden.jsonl", I, "", "hidden file (valid JSONL)", special=_named(".hidden.jsonl", good_jsonl)),
    Case(
        "~$candidates.csv",
        I,
        "",
        "Office lock file pattern ~* (valid CSV)",
        special=_named("~$candidates.csv", csv_bytes),
    ),
    Case(
        "upload.jsonl.part",
        I,
        "",
        "partial upload *.part (valid JSONL)",
        special=_named("upload.jsonl.part", good_jsonl),
    ),
    Case(
        "export.csv.crdownload",
        I,
        "",
        "browser download in progress *.crdownload",
        special=_named("export.csv.crdownload", csv_bytes),
    ),
    Case("draft.jsonl.tmp", I, "", "temporary file *.tmp", special=_named("draft.jsonl.tmp", good_jsonl)),
    Case(
        ".syncthing.requests.jsonl.tmp",
        I,
        "",
        "Syncthing temporary file",
        special=_named(".syncthing.requests.jsonl.tmp", good_jsonl),
    ),
    Case(
        "~syncthing~requests.jsonl.tmp",
        I,
        "",
        "Syncthing temporary file (Windows naming)",
        special=_named("~syncthing~requests.jsonl.tmp", good_jsonl),
    ),
    Case(".DS_Store", I, "", "macOS folder metadata", special=_named(".DS_Store", parquet_bytes)),
    Case("Thumbs.db", I, "", "Windows thumbnail cache", special=_named("Thumbs.db", parquet_bytes)),
    Case(
        "desktop.ini",
        I,
        "",
        "Windows folder settings",
        special=_named("desktop.ini", b"[.ShellClassInfo]\r\nIconResource=x.dll,0\r\n"),
    ),
    Case("@eaDir", I, "", "Synology metadata folder (holds a valid requests.jsonl)", special=_eadir, subdir=""),
]

ALL_CASES: list[Case] = CASES + SPECIAL_CASES


# --------------------------------------------------------------------------- public helpers


def label_for(path: str | bytes | os.PathLike) -> str:
    """The expectations.toml key for an inbox file: its name, with control characters
    written as \\xNN and bytes that are not UTF-8 as \\xNN (backslash, x, two hex digits)."""
    raw = os.fsencode(path)
    name = raw.rsplit(b"/", 1)[-1]
    text = name.decode("utf-8", "backslashreplace")
    return "".join(f"\\x{ord(c):02x}" if (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F) else c for c in text)


def load_expectations(path: pathlib.Path = EXPECTATIONS) -> dict[str, dict]:
    with open(path, "rb") as f:
        return tomllib.load(f)


def expectation_for(path: str | os.PathLike, root: os.PathLike | None = None, expectations: dict | None = None) -> dict:
    """The expectations entry for a file made by make_all/make_special; root is only used
    to sanity-check that the file sits in the subdir the entry names."""
    exp = (expectations or load_expectations())[label_for(path)]
    if root is not None:
        rel = pathlib.Path(path).parent.relative_to(root).as_posix()
        want = exp.get("subdir", "") or "."
        if rel != want:
            raise ValueError(f"{path!s}: expected under {want!r}, found under {rel!r}")
    return exp


def allowed_outcomes(exp: dict, as_root: bool | None = None) -> list[str]:
    """Outcomes a test should accept for an entry (as_root defaults to os.geteuid() == 0)."""
    if as_root is None:
        as_root = os.geteuid() == 0
    out = [exp["outcome"], *exp.get("also_ok", [])]
    if as_root:
        out += exp.get("also_ok_as_root", [])
    return out


def reasons(exp: dict) -> list[str]:
    """Substrings of which at least one must appear (case-insensitively) in the error text."""
    return [r for r in [exp.get("reason_contains", ""), *exp.get("reason_any", [])] if r]


def install_pipeline(inbox: os.PathLike, subdir: str = CSV_SUBDIR) -> pathlib.Path:
    """Copy inbox.example/candidates/{pipeline.toml,rubric.md} into inbox/<subdir>/."""
    d = pathlib.Path(inbox) / subdir
    d.mkdir(parents=True, exist_ok=True)
    for name in ("pipeline.toml", "rubric.md"):
        shutil.copyfile(EXAMPLE_PIPELINE / name, d / name)
    return d


def _dest(target_dir: pathlib.Path, case: Case, csv_subdir: str | None) -> pathlib.Path:
    sub = case.where
    if sub == CSV_SUBDIR:
        sub = csv_subdir or ""
    d = target_dir / sub if sub else target_dir
    d.mkdir(parents=True, exist_ok=True)
    return d


def make_special(target_dir: pathlib.Path, *, csv_subdir: str | None = CSV_SUBDIR) -> list[pathlib.Path]:
    """Create the files that cannot live in git into target_dir (CSV ones into
    target_dir/csv_subdir; None puts everything flat) and return their paths, in
    table order. Does not install the pipeline (see install_pipeline)."""
    target_dir = pathlib.Path(target_dir)
    out = []
    for case in SPECIAL_CASES:
        p = case.special(_dest(target_dir, case, csv_subdir))
        got = label_for(p)
        if got != case.label:  # keeps expectations.toml keys honest
            raise AssertionError(f"label mismatch: {got!r} != {case.label!r}")
        out.append(p)
    return out


def copy_checked_in(target_dir: pathlib.Path, *, csv_subdir: str | None = CSV_SUBDIR) -> list[pathlib.Path]:
    """Copy the checked-in corpus files (bad/ and bad/accepted/) into target_dir."""
    target_dir = pathlib.Path(target_dir)
    out = []
    for case in CASES:
        src = case.folder / case.label
        dst = _fresh(_dest(target_dir, case, csv_subdir) / case.label)
        shutil.copyfile(src, dst)
        os.chmod(dst, case.mode)
        out.append(dst)
    return out


def make_all(
    target_dir: pathlib.Path, *, csv_subdir: str | None = CSV_SUBDIR, install: bool = False
) -> list[pathlib.Path]:
    """The whole corpus into target_dir: checked-in files, then generated ones.
    With install=True also put the example pipeline into target_dir/csv_subdir."""
    target_dir = pathlib.Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    if install and csv_subdir:
        install_pipeline(target_dir, csv_subdir)
    return copy_checked_in(target_dir, csv_subdir=csv_subdir) + make_special(target_dir, csv_subdir=csv_subdir)


# --------------------------------------------------------------------------- rebuild / check


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _toml_list(xs) -> str:
    return "[" + ", ".join(_toml_str(x) if isinstance(x, str) else str(x) for x in xs) + "]"


def render_expectations() -> str:
    lines = [
        "# Expected outcome for every file of the hostile-inbox corpus.",
        "# GENERATED by `python3 tests/data/make_bad.py --rebuild` from CASES there; edit that instead.",
        "# Format and meaning: tests/data/bad/README.md. Key = file name (label_for() in make_bad.py).",
        "",
    ]
    for c in ALL_CASES:
        lines.append(f"[{_toml_str(c.label)}]")
        lines.append(f"outcome = {_toml_str(c.outcome)}")
        if c.also_ok:
            lines.append(f"also_ok = {_toml_list(c.also_ok)}")
        if c.also_ok_as_root:
            lines.append(f"also_ok_as_root = {_toml_list(c.also_ok_as_root)}")
        lines.append(f"reason_contains = {_toml_str(c.reason)}")
        if c.reason_any:
            lines.append(f"reason_any = {_toml_list(c.reason_any)}")
        if c.results is not None:
            lines.append(f"results = {c.results}")
        if c.error_lines is not None:
            lines.append(f"error_lines = {_toml_list(c.error_lines)}")
        lines.append(f"subdir = {_toml_str(c.where)}")
        lines.append(f"source = {_toml_str(c.source)}")
        lines.append(f"what = {_toml_str(c.what)}")
        lines.append("")
    return "\n".join(lines)


README_HEAD = """\
# tests/data/bad — the hostile-inbox corpus

Files that a test drops into batchd's inbox one by one. Each must end in a clear
record (or, for `ignored`, in nothing at all); the daemon must never crash, hang
or stop processing the next file. Everything here comes from one table, `CASES`
in `tests/data/make_bad.py`; this README and `expectations.toml` are generated
from it (`python3 tests/data/make_bad.py --rebuild`; `--check` tells whether they
are current).

- `bad/*` — checked-in files that fail, partly fail, or may go either way.
- `bad/accepted/*` — checked-in files that look odd but are valid: they must succeed.
- generated — cannot live in git (symlinks, FIFO, a directory named `x.csv`, mode
  000, names with newlines or non-UTF-8 bytes) or are big (1,000,000 lines, a 5 MB
  line, 100,000-deep nesting, a 200 kB CSV field): `make_special(dir)` creates them.

## Using it

```python
import importlib.util, os, pathlib
spec = importlib.util.spec_from_file_location("make_bad", "tests/data/make_bad.py")
mb = importlib.util.module_from_spec(spec); spec.loader.exec_module(mb)

mb.install_pipeline(inbox)                 # inbox/candidates/ = inbox.example/candidates pipeline
staging = tmp / "staging"                  # same filesystem as the inbox
for p in mb.make_all(staging):             # checked-in copies + generated files, inbox layout
    exp = mb.expectation_for(p, staging)   # the entry below
    os.rename(p, inbox / p.relative_to(staging))
    # wait for the record, then check:
    #   outcome in mb.allowed_outcomes(exp)      (as root, also_ok_as_root counts too)
    #   if not accepted: any(r in error_text.lower() for r in mb.reasons(exp))
```

- **Where files go** (`subdir`): every `*.csv` (any case) goes into `inbox/candidates/`,
  which holds a copy of `inbox.example/candidates/pipeline.toml` (columns
  `candidate_id,name,location,current_title,years_experience,skills,summary`);
  everything else goes to the inbox root. `x.csv` (a directory) and `@eaDir` go to
  the root. Move files from a staging folder with `os.rename` (symlinks stay
  symlinks; FIFOs stay FIFOs); do not copy them.
- **Finding the record**: output folders are named after the stem and several
  stems repeat (`empty.csv`/`empty.jsonl`, `nul_bytes.*`, `loop_*`), so find a
  job by the input name in `metrics.json`, not by folder name.
- **Liveness**: after each file, a valid sentinel file (e.g. a 1-line JSONL) must
  still be processed; that is also how a test knows an `ignored` file was passed over.
- **Root**: `unreadable.jsonl` is mode 000, which root reads anyway; run as root,
  `also_ok_as_root` lets it be `accepted`.

## expectations.toml

One table per file, keyed by the file name. Names that are not printable UTF-8
are written with `\\xNN` escapes (`new\\x0aline.jsonl` is `b"new\\nline.jsonl"`,
`caf\\xe9_latin1.jsonl` is `b"caf\\xe9_latin1.jsonl"`); `label_for(path)` computes
the key for any path.

| key | meaning |
| --- | --- |
| `outcome` | what a good implementation does: `accepted`, `partial`, `rejected` or `ignored` |
| `also_ok` | other outcomes that are tolerated (a reasonable design may go either way) |
| `also_ok_as_root` | further outcomes tolerated when the daemon runs as root |
| `reason_contains` | short lowercase substring expected (case-insensitively) in the error text of a non-accepted outcome: `errors.jsonl` messages or `metrics.json` |
| `reason_any` | alternative substrings: the check passes if `reason_contains` **or any of these** appears |
| `results` | exact number of lines in `results.jsonl` when the outcome is `outcome` (not an `also_ok` one) |
| `error_lines` | 1-based physical line numbers that must carry per-line errors (`line` in `errors.jsonl`), for JSONL `partial` |
| `subdir` | where to drop it: `""` = inbox root, `"candidates"` = the pipeline folder |
| `source` | `bad/<name>`, `bad/accepted/<name>`, or `generated` |
| `what` | what is wrong with it |

Outcomes:

- `accepted` — the job completes (`metrics.json` status `completed`) and every
  request runs (`results` lines in `results.jsonl`); per-line errors only for
  lines that are not requests at all (e.g. blank lines), if the implementation
  chooses to report them.
- `partial` — good lines/rows run (`results` of them), bad ones become per-line
  error records (`error_lines` for JSONL); the job still completes.
- `rejected` — nothing runs: no line in `results.jsonl` (or no such file), and an
  error record in the outbox (errors.jsonl and/or metrics.json) whose text matches
  the reason. A file-level refusal and "every line failed validation" both count.
- `ignored` — never touched: no outbox record, the file stays in the inbox
  unchanged (same name, same bytes).

## The files
"""


def render_readme() -> str:
    out = [README_HEAD]
    groups = [
        ("Checked in, `bad/`", [c for c in CASES if c.folder == BAD]),
        ("Checked in, `bad/accepted/` (must succeed)", [c for c in CASES if c.folder == ACCEPTED]),
        ("Generated by `make_special()`", SPECIAL_CASES),
    ]
    for title, cases in groups:
        out.append(f"\n### {title} ({len(cases)})\n")
        out.append("| file | what is wrong | expected | reason contains | where |")
        out.append("| --- | --- | --- | --- | --- |")
        for c in cases:
            exp = c.outcome + "".join(f" / {o}" for o in c.also_ok)
            if c.also_ok_as_root:
                exp += " (root: " + ", ".join(c.also_ok_as_root) + ")"
            if c.results is not None:
                exp += f", {c.results} results"
            if c.error_lines:
                exp += ", error lines " + ",".join(map(str, c.error_lines))
            reasons_ = " / ".join(f"`{r}`" for r in [c.reason, *c.reason_any] if r) or "—"
            name = c.label.replace("|", "\\|")
            if len(name) > 40:
                name = name[:18] + "…" + name[-12:] + f" ({len(os.fsencode(c.label))} bytes)"
            what = c.what.replace("|", "\\|")
            out.append(f"| `{name}` | {what} | {exp} | {reasons_} | {c.where or 'root'} |")
    out.append(f"\nTotal: {len(ALL_CASES)} files ({len(CASES)} checked in, {len(SPECIAL_CASES)} generated).\n")
    return "\n".join(out)


def _problems() -> list[str]:
    probs = []
    labels = [c.label for c in ALL_CASES]
    if len(set(labels)) != len(labels):
        probs.append("duplicate labels in CASES")
    for c in ALL_CASES:
        if c.outcome not in OUTCOMES or any(o not in OUTCOMES for o in c.also_ok):
            probs.append(f"{c.label}: bad outcome")
    want = {c.folder / c.label: c for c in CASES}
    for p, c in want.items():
        if not p.is_file():
            probs.append(f"missing: {p.relative_to(HERE)}")
        elif c.exact and p.read_bytes() != c.content():
            probs.append(f"out of date: {p.relative_to(HERE)}")
    for d in (BAD, ACCEPTED):
        for p in d.iterdir():
            if p.is_file() and p not in want and p not in (README, EXPECTATIONS):
                probs.append(f"stray file: {p.relative_to(HERE)}")
    for path, text in ((EXPECTATIONS, render_expectations()), (README, render_readme())):
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            probs.append(f"out of date: {path.relative_to(HERE)}")
    return probs


def rebuild() -> None:
    ACCEPTED.mkdir(parents=True, exist_ok=True)
    want = {c.folder / c.label for c in CASES}
    for d in (BAD, ACCEPTED):
        for p in d.iterdir():
            if p.is_file() and p not in want and p not in (README, EXPECTATIONS):
                p.unlink()
    for c in CASES:
        p = c.folder / c.label
        data = c.content()
        if c.exact or not p.is_file():
            p.write_bytes(data)
        os.chmod(p, c.mode)
    EXPECTATIONS.write_text(render_expectations(), encoding="utf-8")
    README.write_text(render_readme(), encoding="utf-8")
    tomllib.loads(EXPECTATIONS.read_text(encoding="utf-8"))  # must parse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="batchd hostile-inbox corpus")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--rebuild", action="store_true", help="rewrite checked-in files, README, expectations")
    g.add_argument("--check", action="store_true", help="exit 1 when the checked-in corpus is out of date")
    g.add_argument("dir", nargs="?", type=pathlib.Path, help="make_all(DIR): write the whole corpus there")
    ap.add_argument("--install-pipeline", action="store_true", help="with DIR: also copy the example pipeline")
    args = ap.parse_args(argv)
    if args.rebuild:
        rebuild()
        print(f"rebuilt {len(CASES)} files, {EXPECTATIONS.name}, {README.name}", file=sys.stderr)
        return 0
    if args.check:
        probs = _problems()
        for p in probs:
            print(p, file=sys.stderr)
        return 1 if probs else 0
    paths = make_all(args.dir, install=args.install_pipeline)
    for p in paths:
        print(label_for(p))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
