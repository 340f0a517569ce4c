"""Fixtures for system tests: a real systemd machine (see harness.py).

Set BATCHD_SYSTEM_TESTS=0 to skip them all (they need root and take seconds).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Importable as plain `harness` whatever the import mode and whether tests/ is a package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Bind,
    BootError,
    SystemdMachine,
    cleanup_stale,
    unavailable_reason,
)

PIP_CACHE = Path("/root/.cache/pip")


def default_binds() -> list[Bind]:
    """The host's pip cache, read-write, so installs inside are fast and warm the host's."""
    return [Bind(PIP_CACHE)] if PIP_CACHE.is_dir() else []


@pytest.fixture(scope="session")
def machine() -> Iterator[SystemdMachine]:
    """One booted machine for the session; tests must not depend on each other's leftovers."""
    if os.environ.get("BATCHD_SYSTEM_TESTS") == "0":
        pytest.skip("BATCHD_SYSTEM_TESTS=0")
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"cannot boot a systemd machine: {reason}")
    cleanup_stale()
    m = SystemdMachine(binds=default_binds())
    try:
        m.start(timeout=60)
    except BootError as exc:
        pytest.skip(f"systemd machine did not boot: {exc}")
    try:
        yield m
    finally:
        m.close()
