"""Factories with fast defaults for tests: temp folders, in-process settings, batch input files, and what an
outbox holds (the fixtures in conftest.py are thin wrappers over these)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batchd.config import Settings
from tests.support.running import batchd_env

#: what a test's ``batchd`` subprocess runs with: quick retries and watch, lanes pinned as in ``settings_for``
FAST_ENV = {
    "BATCHD_BACKEND__BACKOFF_SECONDS": "0.05",
    "BATCHD_BACKEND__BACKOFF_MAX_SECONDS": "0.5",
    "BATCHD_WATCH__STABLE_SECONDS": "0.3",
    "BATCHD_WATCH__POLL_SECONDS": "0.2",
    "BATCHD_BACKEND__LANES": "1",  # pinned, as in make_settings; tests of "auto" ask for it
}


@dataclass
class Folders:
    root: Path
    inbox: Path
    outbox: Path
    state: Path

    @classmethod
    def under(cls, root: Path) -> Folders:
        """``inbox``, ``outbox``, ``state`` and an empty ``batchd.toml`` under ``root``, created."""
        f = cls(root, root / "inbox", root / "outbox", root / "state")
        for p in (f.inbox, f.outbox, f.state):
            p.mkdir()
        (root / "batchd.toml").write_text("# test config\n")
        return f

    def env(self, url: str, **extra: str) -> dict[str, str]:
        """Environment for a `batchd` subprocess using these folders and a backend URL."""
        return batchd_env(self.root, url, **{**FAST_ENV, **extra})


def settings_for(folders: Folders, url: str, **overrides: Any) -> Settings:
    """Settings for in-process tests: these folders, the backend at ``url``, fast backoff and watch."""
    # lanes pinned to 1 unless a test asks: call counts and orders stay deterministic
    # (the default, "auto", has its own tests in test_lanes.py and test_runner_lanes.py)
    backend = {
        "url": url,
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


def outbox_entries(outbox: Path) -> list[Path]:
    """What is in the outbox root apart from the live status files (``!status.*``, and their
    dot-named temp files while one is being replaced): job folders and any ``.partial`` one."""
    return sorted(p for p in outbox.iterdir() if not p.name.lstrip(".").startswith("!status."))


def write_jsonl(path: Path, n: int, *, model: str = "gemma3:4b", start: int = 0, bad_every: int = 0) -> list[str]:
    """A batch input file with n lines; every `bad_every`-th line invalid. Returns the custom_ids."""
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
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
