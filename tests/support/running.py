"""Running batchd from a test or a benchmark: the one ``BATCHD_*`` environment for a subprocess, the
``python -m batchd`` command line, and ``batchd run --once`` in this process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only an annotation: bench/gpu.py imports this module where batchd is not installed
    from batchd.config import Settings

REPO = Path(__file__).resolve().parents[2]


def batchd_env(root: Path, url: str, **extra: str) -> dict[str, str]:
    """Environment for a ``batchd`` subprocess on the folders under ``root`` (``inbox``, ``outbox``,
    ``state``, ``batchd.toml``) and a backend URL: this process's environment without any ``BATCHD_*``
    of its own, JSON logs, then ``extra`` (``BATCHD_*`` names as keys) over it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    env.update(
        {
            "BATCHD_CONFIG": str(root / "batchd.toml"),
            "BATCHD_INBOX": str(root / "inbox"),
            "BATCHD_OUTBOX": str(root / "outbox"),
            "BATCHD_STATE_DIR": str(root / "state"),
            "BATCHD_BACKEND__URL": url,
            "BATCHD_LOG__TARGET": "json",
        }
    )
    env.update(extra)
    return env


def batchd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "batchd", *args]


def run_batchd(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(batchd_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def run_daemon_once(settings: Settings) -> None:
    """``batchd run --once`` in this process (for tests that look inside afterwards)."""
    from batchd.daemon import Daemon

    async def go() -> None:
        daemon = Daemon(settings=settings)
        try:
            await daemon.run_once()
        finally:
            await daemon.aclose()

    asyncio.run(go())
