"""Embedding vectors off the wire into packed little-endian float32 rows, checked once.

A 768-dimension vector is 3 KB packed and ~14 KB as JSON text: the journal, the
result lines and ``embeddings.npy`` all start from these bytes, and nothing holds a
vector as Python floats longer than the reply's parse. (pydantic would take ~1 ms to
validate 64 such rows; ``array`` packs them in a tenth of that and refuses a non-number.)
"""

from __future__ import annotations

import sys
from array import array
from typing import Any

from batchd.errors import BackendServerError


def pack_rows(rows: Any, expected: int) -> list[bytes]:
    """``expected`` vectors (lists of numbers, all one length) as packed float32 rows; 502 otherwise."""
    if not isinstance(rows, list) or len(rows) != expected:
        got = len(rows) if isinstance(rows, list) else type(rows).__name__
        raise BackendServerError(f"reply has {got} embeddings for {expected} inputs", status_code=502)
    out: list[bytes] = []
    width = -1
    for i, row in enumerate(rows):
        try:
            packed = array("f", row)
        except TypeError as exc:
            raise BackendServerError(f"reply has no valid embeddings[{i}] ({exc})", status_code=502) from exc
        if width < 0:
            width = len(packed)
        if not packed or len(packed) != width:
            raise BackendServerError(
                f"reply's embeddings[{i}] has {len(packed)} dimensions, not {width}", status_code=502
            )
        if sys.byteorder == "big":  # the journal and .npy files are little-endian everywhere
            packed.byteswap()
        out.append(packed.tobytes())
    return out


def unpack(blob: bytes) -> list[float]:
    """A packed row back to floats (for a result line's ``embedding``)."""
    values = array("f")
    values.frombytes(blob)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()
