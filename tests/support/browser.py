"""Headless Chromium for the tests that look at a page as a person would, and a PNG read without Pillow."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

#: the flags that keep a headless Chromium to itself: no network of its own, no updates, no first-run UI
QUIET = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(
    page: Path, shot: Path, *, home: Path, size: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Render ``page`` (a file) into ``shot`` (PNG) at ``size`` ("W,H"); the profile and HOME live in ``home``."""
    cmd = [
        str(chromium()),
        *QUIET,
        *extra,
        f"--user-data-dir={home / 'profile'}",
        f"--screenshot={shot}",
        f"--window-size={size}",
        page.as_uri(),
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)}, check=False
    )


@dataclass(frozen=True)
class Png:
    """A PNG's size and its decompressed, still row-filtered pixel stream (8-bit RGB or RGBA only)."""

    width: int
    height: int
    channels: int
    raw: bytes


def read_png(png: bytes) -> Png:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        chunk = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return Png(width, height, channels, zlib.decompress(idat))
