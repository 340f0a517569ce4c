"""Embedding vectors out of the journal: into result lines (floats or base64), and ``embeddings.npy``.

The journal keeps each line's vectors packed (little-endian float32); a result line gets them back
in the ``encoding_format`` the line asked for (``base64`` is those same bytes, as OpenAI sends
it). A CSV pipeline with ``task = "embed"`` also gets ``embeddings.npy`` (float32 rows in input
order, ``numpy.load`` reads it) beside ``embeddings_ids.csv`` (the row ids, row for row); the
``.npy`` header is written by hand (format 1.0), so batchd needs no NumPy.
"""

from __future__ import annotations

import base64
from typing import Any

from batchd.backends.vectors import unpack
from batchd.journal import Request

NPY_MAGIC = b"\x93NUMPY\x01\x00"


def with_vectors(req: Request, *, as_base64: bool = False) -> dict[str, Any]:
    """The stored ``CreateEmbeddingResponse`` with each ``embedding`` put back from the packed blob:
    floats, or base64 where the line asked (or ``as_base64``: a CSV pipeline, whose vectors are in
    ``embeddings.npy`` too; base64 is the same bytes at a quarter of the JSON text's size)."""
    body = dict(req.result or {})
    data = [dict(d) for d in body.get("data") or []]
    blob = req.vector or b""
    size = len(blob) // max(1, len(data))
    as_base64 = as_base64 or (req.body or {}).get("encoding_format") == "base64"
    for i, item in enumerate(data):
        row = blob[i * size : (i + 1) * size]
        item["embedding"] = base64.b64encode(row).decode() if as_base64 else unpack(row)
    body["data"] = data
    return body


def npy_header(rows: int, dims: int) -> bytes:
    """A ``.npy`` 1.0 header for ``rows`` x ``dims`` little-endian float32, padded to 64 bytes as the format asks."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dims}), }}"
    length = len(NPY_MAGIC) + 2 + len(text) + 1
    text += " " * (-length % 64) + "\n"
    return NPY_MAGIC + len(text).to_bytes(2, "little") + text.encode("latin-1")


class NpyRows:
    """Rows appended in order to an open ``embeddings.npy`` (the header goes first, with the row count
    known up front) and their ids to ``embeddings_ids.csv``."""

    def __init__(self, npy: Any, ids: Any, rows: int) -> None:
        self.npy, self.ids, self.rows = npy, ids, rows
        self.written = 0
        ids.write(b"id\n")

    def add(self, custom_id: str | None, blob: bytes | None) -> None:
        if not blob or self.written >= self.rows:
            return
        if self.written == 0:
            self.npy.write(npy_header(self.rows, len(blob) // 4))
        self.npy.write(blob)
        self.ids.write(_csv_cell(custom_id or "").encode() + b"\n")
        self.written += 1


def _csv_cell(value: str) -> str:
    if any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value
