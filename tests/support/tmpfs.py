"""A small tmpfs mounted for a test (root only): a real filesystem that fills up, for the disk-full tests."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(parent: Path, name: str, size: str) -> Iterator[Path]:
    """``parent/<name>-<random>`` as a tmpfs of ``size`` (``64k``, ``16m``); skips the test where no mount
    can be made, unmounts (lazily) after."""
    mnt = parent / f"{name}-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
