"""The daemon's job events: every job that finishes says so once, whatever way it finished."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from typing import Any

import structlog

from batchd.config import Settings
from batchd.daemon import Daemon
from batchd.journal import CancelAnswer
from tests.support.factories import Folders, write_jsonl


def _drain(settings: Settings, *, cancel: str | None = None) -> list[dict[str, Any]]:
    """Claim what is in the inbox, cancel ``cancel`` while it is queued, then run until idle."""

    async def go() -> None:
        daemon = Daemon(settings=settings)
        try:
            daemon.startup()
            daemon.claim_present()
            if cancel is not None:
                (job,) = [j for j in daemon.journal.jobs() if j.input_name == cancel]
                assert daemon.journal.request_cancel(job.id) is CancelAnswer.CANCELLED
            while await daemon.step():
                pass
        finally:
            await daemon.aclose()

    with structlog.testing.capture_logs() as events:
        asyncio.run(go())
    return events


def test_job_finished_for_every_finished_job(folders: Folders, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    write_jsonl(folders.inbox / "good.jsonl", 3)
    write_jsonl(folders.inbox / "later.jsonl", 2, start=10)
    (folders.inbox / "notes.txt").write_text("not an input\n")  # rejected: unsupported type
    events = _drain(settings, cancel="later.jsonl")
    shutil.copy(folders.outbox / "good" / "input.jsonl", folders.inbox / "again.jsonl")  # same bytes: duplicate
    events += _drain(settings)

    finished = {e["input"]: e for e in events if e["event"] == "job_finished"}
    published = [e["input"] for e in events if e["event"] == "job_published"]
    assert sorted(published) == sorted(finished) == ["again.jsonl", "good.jsonl", "later.jsonl", "notes.txt"]
    assert [e["input"] for e in events if e["event"] == "job_finished"].count("good.jsonl") == 1
    assert {k: (v["status"], v["completed"], v["failed"], v["skipped"]) for k, v in finished.items()} == {
        "good.jsonl": ("completed", 3, 0, 0),
        "later.jsonl": ("cancelled", 0, 0, 2),
        "notes.txt": ("failed", 0, 0, 0),
        "again.jsonl": ("duplicate", 0, 0, 0),
    }
    # Each job_finished comes before its job_published, and carries the job id.
    for name, ev in finished.items():
        assert ev["job_id"]
        first_published = next(i for i, e in enumerate(events) if e["event"] == "job_published" and e["input"] == name)
        assert events.index(ev) < first_published
