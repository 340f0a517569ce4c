"""Embedding vectors off the wire into packed little-endian float32 rows, checked once.

A 768-dimension vector is 3 KB packed and ~14 KB as JSON text: the journal, the
result lines and ``embeddings.npy`` all start from these bytes, and nothing holds a
vector as Python floats longer than the reply's parse. (pydantic would take ~6 ms to
validate 64 such rows; ``struct`` packs them in 0.9 ms and refuses a non-number; ``array`` took 4 ms.)
"""

from __future__ import annotations

import struct
from typing import Any

from batchd.errors import BackendServerError


def pack_rows(rows: Any, expected: int) -> list[bytes]:
    """``expected`` vectors (lists of numbers, all one length) as packed float32 rows; 502 otherwise."""
    if not isinstance(rows, list) or len(rows) != expected:
        got = len(rows) if isinstance(rows, list) else type(rows).__name__
        raise BackendServerError(f"reply has {got} embeddings for {expected} inputs", status_code=502)
    out: list[bytes] = []
    width = len(rows[0]) if rows and isinstance(rows[0], list) else 0
    layout = struct.Struct(f"<{width}f")  # little-endian whatever the host: the journal and .npy say so
    for i, row in enumerate(rows):
        if not isinstance(row, list) or not row or len(row) != width:
            size = len(row) if isinstance(row, list) else type(row).__name__
            raise BackendServerError(f"reply's embeddings[{i}] has {size} values, not {width}", status_code=502)
        try:
            out.append(layout.pack(*row))
        except (struct.error, OverflowError) as exc:
            raise BackendServerError(f"reply has no valid embeddings[{i}] ({exc})", status_code=502) from exc
    return out


def unpack(blob: bytes) -> list[float]:
    """A packed row back to floats (for a result line's ``embedding``)."""
    return list(struct.unpack(f"<{len(blob) // 4}f", blob))
