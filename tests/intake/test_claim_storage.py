"""A spool that refuses the copy (full disk, quota, I/O error) holds the claim: the input is never
rejected for it, no temp file stays behind, and the claim goes through once the disk accepts writes."""

from __future__ import annotations

import asyncio
import errno
import io
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

import batchd.intake.claim as claim_module
from batchd.config import Settings
from batchd.errors import StorageError
from batchd.intake.claim import Claimer
from batchd.intake.inbox import scan
from batchd.intake.worker import Intake
from batchd.journal import Journal
from batchd.storage import DiskWatch, Store
from tests.support.factories import Folders, write_jsonl
from tests.support.waiting import until


class _FullFile(io.BufferedWriter):
    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def _full_spool(monkeypatch: pytest.MonkeyPatch) -> None:
    def refusing_open(path: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        if "w" in mode:
            return _FullFile(io.FileIO(path, mode))
        return open(path, mode, *a, **kw)

    monkeypatch.setattr(claim_module, "open", refusing_open, raising=False)


def test_a_full_spool_is_a_storage_error_not_a_rejected_input(
    make_settings: Callable[..., Settings], folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    write_jsonl(folders.inbox / "a.jsonl", 5)
    journal = Journal(settings.journal_path)
    claimer = Claimer(settings=settings, journal=journal)
    (cand,) = scan(settings.inbox)
    _full_spool(monkeypatch)
    with pytest.raises(StorageError) as raised:
        claimer.claim(cand)
    assert raised.value.full and raised.value.path is not None and raised.value.path.startswith(str(settings.state_dir))
    assert journal.jobs() == []  # no job, above all no rejected one
    assert (folders.inbox / "a.jsonl").exists()
    assert [p.name for p in (settings.state_dir / "spool").iterdir()] == []  # no .tmp left behind
    monkeypatch.undo()
    claimed = claimer.claim(cand)
    assert claimed is not None and claimed.state.value in ("queued", "ingesting")


def test_the_claim_task_waits_and_claims_when_the_spool_accepts_writes(
    make_settings: Callable[..., Settings], folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    write_jsonl(folders.inbox / "a.jsonl", 5)
    (cand,) = scan(settings.inbox)
    disk = DiskWatch(first=0.01, most=0.05)
    claimed: list[int] = []

    async def go() -> None:
        stop = asyncio.Event()
        intake = Intake(settings=lambda: settings, stop=stop, on_claimed=lambda: claimed.append(1), disk=disk)
        _full_spool(monkeypatch)
        task = asyncio.create_task(intake.claims())
        await intake._claims.put(cand)
        await until(lambda: disk.is_blocked(Store.SPOOL), timeout=10)
        monkeypatch.undo()
        await until(lambda: claimed, timeout=10)
        assert not disk.is_blocked()
        stop.set()
        await asyncio.wait_for(task, 10)

    with capture_logs() as logs:
        asyncio.run(go())
    assert [e["event"] for e in logs if e["event"].startswith("storage_")] == ["storage_blocked", "storage_recovered"]
    assert not [e for e in logs if e["event"] in ("input_rejected", "claim_failed")]
    journal = Journal(settings.journal_path)
    assert [j.input_name for j in journal.jobs()] == ["a.jsonl"]
