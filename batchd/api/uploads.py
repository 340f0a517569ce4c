"""Stream a ``multipart/form-data`` upload straight into the spool, hashing as it goes.

Starlette's own form parser buffers file parts in a temporary file with no size
limit; this one writes the ``file`` part to ``<spool>/api/<id>.part`` chunk by
chunk, counts bytes while reading and stops at the limit, so an oversized
upload costs at most ``limit`` bytes of disk and is never read to the end.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from batchd.fsutil import fsync_dir

MAX_FIELD_BYTES = 1024
MAX_PARTS = 16


class UploadError(Exception):
    """Why an upload was refused, with the HTTP status to answer."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    path: Path | None = None


@dataclass
class _Part:
    headers: dict[str, bytes] = field(default_factory=dict)
    name: str = ""
    value: bytearray = field(default_factory=bytearray)


def boundary_of(content_type: str) -> bytes:
    ctype, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UploadError(400, "expected multipart/form-data with a boundary")
    return boundary


def clean_filename(raw: str) -> str:
    """The last path component, printable, at most 200 characters; never used as a path."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:200] or "upload.jsonl"


async def receive_upload(
    chunks: AsyncIterator[bytes], *, content_type: str, folder: Path, file_id: str, limit: int
) -> Upload:
    """Parse the body into fields plus one file written to ``folder/<file_id>.part``.

    The caller renames the part file once it accepts the upload; on any error
    the part file is removed here.
    """
    boundary = boundary_of(content_type)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{file_id}.part"
    events: list[tuple[str, Any]] = []
    callbacks: Any = {
        "on_part_begin": lambda: events.append(("begin", None)),
        "on_header_field": lambda d, s, e: events.append(("hfield", d[s:e])),
        "on_header_value": lambda d, s, e: events.append(("hvalue", d[s:e])),
        "on_header_end": lambda: events.append(("hend", None)),
        "on_headers_finished": lambda: events.append(("hdone", None)),
        "on_part_data": lambda d, s, e: events.append(("data", d[s:e])),
        "on_part_end": lambda: events.append(("end", None)),
        "on_end": lambda: events.append(("finish", None)),
    }
    parser = MultipartParser(boundary, callbacks)
    up = Upload()
    digest = hashlib.sha256()
    out = None
    part: _Part | None = None
    hname = b""
    hvalue = b""
    parts = 0
    complete = False
    try:
        async for chunk in chunks:
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise UploadError(400, f"malformed multipart body: {exc}") from exc
            for kind, data in events:
                if kind == "begin":
                    parts += 1
                    if parts > MAX_PARTS:
                        raise UploadError(400, "too many form fields")
                    part, hname, hvalue = _Part(), b"", b""
                elif kind == "hfield":
                    hname += data
                elif kind == "hvalue":
                    hvalue += data
                elif kind == "hend" and part is not None:
                    part.headers[hname.decode("latin-1").lower()] = hvalue
                    hname, hvalue = b"", b""
                elif kind == "hdone" and part is not None:
                    _, params = parse_options_header(part.headers.get("content-disposition", b""))
                    part.name = params.get(b"name", b"").decode("utf-8", "replace")
                    if part.name == "file":
                        if out is not None:
                            raise UploadError(400, "more than one file in the upload", param="file")
                        up.filename = clean_filename(params.get(b"filename", b"").decode("utf-8", "replace"))
                        out = open(tmp, "wb")  # noqa: SIM115 -- closed below, or on error
                elif kind == "data" and part is not None:
                    if part.name == "file" and out is not None:
                        up.size += len(data)
                        if up.size > limit:
                            raise UploadError(
                                413, f"file is larger than api.max_upload_bytes ({limit:,})", param="file"
                            )
                        digest.update(data)
                        out.write(data)
                    else:
                        part.value += data
                        if len(part.value) > MAX_FIELD_BYTES:
                            raise UploadError(413, f"form field {part.name!r} is too long")
                elif kind == "finish":
                    complete = True
                elif kind == "end" and part is not None:
                    if part.name != "file":
                        up.fields[part.name] = part.value.decode("utf-8", "replace")
                    part = None
            events.clear()
        parser.finalize()
        if not complete:
            raise UploadError(400, "the upload ended before its closing multipart boundary")
        if out is None:
            raise UploadError(400, "the upload has no 'file' part", param="file")
        out.flush()
        os.fsync(out.fileno())
        out.close()
        out = None
        up.sha256 = digest.hexdigest()
        up.path = tmp
        return up
    except BaseException:
        if out is not None:
            out.close()
            out = None
        tmp.unlink(missing_ok=True)
        raise


def accept(upload: Upload, final: Path) -> None:
    """Move the finished part file to its final name, durably."""
    assert upload.path is not None
    os.replace(upload.path, final)
    fsync_dir(final.parent)
    upload.path = final


def sweep(folder: Path) -> None:
    """Drop part files left by a crash mid-upload."""
    if folder.is_dir():
        for stray in folder.glob("*.part"):
            stray.unlink(missing_ok=True)
