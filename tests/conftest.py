"""Factory fixtures with fast defaults; each cleans up after itself."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batchd.config import Settings
from tests.support.emulator import Emulator

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Folders:
    root: Path
    inbox: Path
    outbox: Path
    state: Path

    def env(self, url: str, **extra: str) -> dict[str, str]:
        """Environment for a `batchd` subprocess using these folders and a backend URL."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
        env.update(
            {
                "BATCHD_CONFIG": str(self.root / "batchd.toml"),
                "BATCHD_INBOX": str(self.inbox),
                "BATCHD_OUTBOX": str(self.outbox),
                "BATCHD_STATE_DIR": str(self.state),
                "BATCHD_BACKEND__URL": url,
                "BATCHD_LOG__TARGET": "json",
                "BATCHD_BACKEND__BACKOFF_SECONDS": "0.05",
                "BATCHD_BACKEND__BACKOFF_MAX_SECONDS": "0.5",
                "BATCHD_WATCH__STABLE_SECONDS": "0.3",
                "BATCHD_WATCH__POLL_SECONDS": "0.2",
                "BATCHD_BACKEND__LANES": "1",  # pinned, as in make_settings; tests of "auto" ask for it
            }
        )
        env.update(extra)
        return env


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    f = Folders(tmp_path, tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state")
    for p in (f.inbox, f.outbox, f.state):
        p.mkdir()
    (tmp_path / "batchd.toml").write_text("# test config\n")
    return f


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator()
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def make_settings(folders: Folders, emulator: Emulator) -> Callable[..., Settings]:
    """Settings for in-process tests: temp folders, the emulator, fast backoff."""

    def make(**overrides: Any) -> Settings:
        # lanes pinned to 1 unless a test asks: call counts and orders stay deterministic
        # (the default, "auto", has its own tests in test_lanes.py and test_runner_lanes.py)
        backend = {
            "url": emulator.url,
            "backoff_seconds": 0.01,
            "backoff_max_seconds": 0.2,
            "lanes": 1,
            **overrides.pop("backend", {}),
        }
        watch = {"stable_seconds": 0.2, "rescan_seconds": 5, "poll_seconds": 0.1, **overrides.pop("watch", {})}
        return Settings(
            inbox=folders.inbox,
            outbox=folders.outbox,
            state_dir=folders.state,
            backend=backend,
            watch=watch,
            **overrides,
        )

    return make


def outbox_entries(outbox: Path) -> list[Path]:
    """What is in the outbox root apart from the live status files (``!status.*``, and their
    dot-named temp files while one is being replaced): job folders and any ``.partial`` one."""
    return sorted(p for p in outbox.iterdir() if not p.name.lstrip(".").startswith("!status."))


def run_daemon_once(settings: Settings) -> None:
    """``batchd run --once`` in this process (for tests that look inside afterwards)."""
    import asyncio

    from batchd.daemon import Daemon

    async def go() -> None:
        daemon = Daemon(settings=settings)
        try:
            await daemon.run_once()
        finally:
            await daemon.aclose()

    asyncio.run(go())


def batchd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "batchd", *args]


def run_batchd(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(batchd_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


class _Poll:
    """The one poll-until rule of the tests: a truthy value ends it, the deadline fails it, saying
    what was awaited (and ``describe()``, the state worth seeing when it fails)."""

    def __init__(self, predicate: Callable[[], Any], timeout: float, describe: Callable[[], object] | None) -> None:
        self.predicate, self.timeout, self.describe = predicate, timeout, describe
        self.deadline = time.monotonic() + timeout

    def check(self) -> Any:
        value = self.predicate()
        if not value and time.monotonic() > self.deadline:
            seen = f"; {self.describe()}" if self.describe is not None else ""
            raise AssertionError(f"condition not met within {self.timeout}s: {self.predicate}{seen}")
        return value


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.05,
    *,
    describe: Callable[[], object] | None = None,
) -> Any:
    """Poll a condition with a deadline (never a fixed sleep); returns its first truthy value. Blocking."""
    poll = _Poll(predicate, timeout, describe)
    while not (value := poll.check()):
        time.sleep(interval)
    return value


async def until(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.01,
    *,
    describe: Callable[[], object] | None = None,
) -> Any:
    """``wait_for`` inside a running event loop: sleeps with ``asyncio.sleep`` so the loop runs meanwhile."""
    poll = _Poll(predicate, timeout, describe)
    while not (value := poll.check()):
        await asyncio.sleep(interval)
    return value


def write_jsonl(path: Path, n: int, *, model: str = "gemma3:4b", start: int = 0, bad_every: int = 0) -> list[str]:
    """A batch input file with n lines; every `bad_every`-th line invalid. Returns the custom_ids."""
    import orjson

    ids = []
    with path.open("wb") as fh:
        for i in range(start, start + n):
            cid = f"req-{i:06d}"
            ids.append(cid)
            if bad_every and i % bad_every == bad_every - 1:
                fh.write(
                    orjson.dumps(
                        {
                            "custom_id": cid,
                            "method": "POST",
                            "url": "/v1/audio/transcriptions",
                            "body": {"model": model, "input": "x"},
                        }
                    )
                    + b"\n"
                )
                continue
            fh.write(
                orjson.dumps(
                    {
                        "custom_id": cid,
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {
                            "model": model,
                            "messages": [
                                {"role": "system", "content": "You are terse."},
                                {"role": "user", "content": f"Question number {i}?"},
                            ],
                        },
                    }
                )
                + b"\n"
            )
    return ids


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    import orjson

    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests against the real llama-server run last: `make test` builds it in the background meanwhile."""
    items.sort(key=lambda item: item.get_closest_marker("llama_server") is not None)
