"""``NAME.cancel`` from the share (``intake.cancels``): the dropper (or root) cancels their job; anyone
else's is refused, visibly; hostile cases (symlink, hard link, someone else's, a flood) as SECURITY.md
tests the rest. Ownership is set with chown: the tests run as root, the files belong to test uids."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from batchd.daemon import Daemon
from batchd.intake.cancels import LOG_PER_PASS, MAX_PER_PASS, CancelDesk
from batchd.intake.inbox import scan
from batchd.journal import JobState, Journal, NewClaim
from batchd.status.page import DaemonState, page_data, render_html
from batchd.status.views import status_views
from tests.support.emulator import Emulator
from tests.support.factories import Folders, write_jsonl
from tests.support.waiting import until

ALICE, MALLORY = 61001, 61002

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to other uids needs root")


def claim(j: Journal, job_id: str, rel: str, owner: int | None) -> None:
    j.claim(
        NewClaim(
            job_id=job_id,
            name=rel.rsplit("/", 1)[-1],
            inbox_path=os.fsencode(rel),
            spool="/nonexistent",
            sha256=None,
            size=1,
            mtime_ns=time.time_ns(),
            input_name=rel,
            stem=job_id,
            kind="jsonl",
            pipeline=rel.split("/")[0] if "/" in rel else None,
            pipeline_json="{}",
            owner_uid=owner,
        )
    )


def drop(folder: Path, name: str, uid: int, data: bytes = b"") -> Path:
    path = folder / name
    path.write_bytes(data)
    os.chown(path, uid, -1)
    return path


@pytest.fixture
def desk(tmp_path: Path) -> tuple[CancelDesk, Journal, Path]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    j = Journal(tmp_path / "j.sqlite3")
    return CancelDesk(inbox, j), j, inbox


def test_the_dropper_and_root_cancel_anyone_else_is_refused_visibly(
    desk: tuple[CancelDesk, Journal, Path],
) -> None:
    d, j, inbox = desk
    claim(j, "old", "cands.csv", ALICE)
    claim(j, "new", "cands.csv", ALICE)  # the newest unfinished one from that name is the one cancelled
    claim(j, "other", "other.csv", ALICE)
    mine = drop(inbox, "cands.csv.cancel", ALICE)
    theirs = drop(inbox, "other.csv.cancel", MALLORY)
    with structlog.testing.capture_logs() as logs:
        verdicts = d.run_pass()
    assert {(v.name, v.reason, v.job_id) for v in verdicts} == {
        ("cands.csv.cancel", None, "new"),
        ("other.csv.cancel", "not_the_owner", "other"),
    }
    assert j.job("new").cancel_requested and not j.job("old").cancel_requested  # type: ignore[union-attr]
    assert not j.job("other").cancel_requested  # type: ignore[union-attr]
    assert not mine.exists() and not theirs.exists()  # removed once acted on
    refused = [e for e in logs if e["event"] == "cancel_refused"]
    assert refused and refused[0]["uid"] == MALLORY and refused[0]["user"] == str(MALLORY)  # no passwd entry
    # the status page shows the refusal, naming the user
    views = status_views(j, limit=5, now=time.time(), schedule=_schedule())
    data = page_data(views, now=time.time(), daemon=DaemonState.RUNNING)
    assert [(r["name"], r["uid"], r["reason"]) for r in data["cancel_refused"]] == [
        ("other.csv.cancel", MALLORY, "not_the_owner")
    ]
    assert f"other.csv.cancel from {MALLORY}: only the person who dropped the file" in render_html(data)
    # root may cancel anyone's
    drop(inbox, "other.csv.cancel", 0)
    assert [v.reason for v in d.run_pass()] == [None]
    assert j.job("other").cancel_requested  # type: ignore[union-attr]


def test_pipeline_folders_and_jobs_without_an_owner(desk: tuple[CancelDesk, Journal, Path]) -> None:
    d, j, inbox = desk
    (inbox / "team").mkdir()
    (inbox / "team" / "pipeline.toml").write_text("")
    claim(j, "p", "team/rows.csv", ALICE)
    claim(j, "api", "rows.csv", None)  # an API upload (or claimed before journal 4): root only
    drop(inbox / "team", "rows.csv.cancel", ALICE)
    drop(inbox, "rows.csv.cancel", ALICE)
    assert sorted((v.name, v.reason) for v in d.run_pass()) == [
        ("rows.csv.cancel", "not_the_owner"),
        ("team/rows.csv.cancel", None),
    ]
    assert j.job("p").cancel_requested and not j.job("api").cancel_requested  # type: ignore[union-attr]


def test_hostile_cancel_files_symlink_hard_link_non_empty_folder(desk: tuple[CancelDesk, Journal, Path]) -> None:
    d, j, inbox = desk
    claim(j, "a", "a.csv", ALICE)
    # mallory cannot borrow alice's uid: a symlink owned (lchown) by alice, pointing at alice's empty file...
    target = drop(inbox.parent, "alice-empty", ALICE)
    link = inbox / "a.csv.cancel"
    link.symlink_to(target)
    os.lchown(link, ALICE, -1)
    assert [v.reason for v in d.run_pass()] == ["not_a_file"]
    assert not link.exists() and not link.is_symlink() and target.exists()  # the link went, not its target
    # ...a hard link to a file of alice's (protected_hardlinks allows it to a group member who can write it)
    os.link(target, link)
    assert [v.reason for v in d.run_pass()] == ["hard_link"]
    assert target.exists()
    # ...alice's non-empty file renamed in is hers, but a .cancel is an empty file: refused, not obeyed
    drop(inbox, "a.csv.cancel", ALICE, b"data")
    assert [v.reason for v in d.run_pass()] == ["not_empty"]
    # a folder named like one is left alone and noted once, not every pass
    (inbox / "x.csv.cancel").mkdir()
    assert [v.reason for v in d.run_pass()] == ["not_a_file"]
    assert d.run_pass() == [] and (inbox / "x.csv.cancel").is_dir()
    assert not j.job("a").cancel_requested  # type: ignore[union-attr]
    # and a .cancel file is never a candidate input
    drop(inbox, "b.csv.cancel", ALICE)
    assert scan(inbox) == []


def test_a_flood_is_paced_and_the_log_and_journal_stay_bounded(desk: tuple[CancelDesk, Journal, Path]) -> None:
    d, j, inbox = desk
    for i in range(300):
        drop(inbox, f"f{i:03d}.csv.cancel", MALLORY)
    passes = []
    with structlog.testing.capture_logs() as logs:
        while left := len(list(inbox.iterdir())):
            passes.append(len(d.run_pass()))
            assert len(passes) < 10, left
    assert passes[0] == MAX_PER_PASS and sum(passes) == 300
    per_pass = [e for e in logs if e["event"] == "cancel_refused"]
    assert len(per_pass) == LOG_PER_PASS * len(passes)
    assert sum(e["count"] for e in logs if e["event"] == "cancel_refused_more") == 300 - len(per_pass)
    assert len(j.refusals(1000)) <= 201


def _schedule() -> Any:
    from batchd.config import ScheduleSettings

    return ScheduleSettings()


def test_a_running_job_is_cancelled_within_two_seconds(
    make_settings: Callable[..., Any], emulator: Emulator, folders: Folders
) -> None:
    emulator.latency = 0.05
    os.chmod(folders.inbox, 0o3770)
    daemon = Daemon(settings=make_settings(watch={"mode": "inotify"}))
    took: dict[str, float] = {}

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run())
        path = folders.root / "long.jsonl"
        write_jsonl(path, 400)
        os.chown(path, ALICE, -1)
        os.rename(path, folders.inbox / "long.jsonl")
        await until(lambda: daemon.current is not None and daemon.current.done > 3, timeout=30)
        start = time.monotonic()
        drop(folders.inbox, "long.jsonl.cancel", ALICE)
        await until(lambda: (folders.outbox / "long").exists(), timeout=10)
        took["cancel"] = time.monotonic() - start
        daemon.stop.set()
        assert await task == 0
        await daemon.aclose()

    asyncio.run(scenario())
    assert took["cancel"] < 2.5, took
    job = [x for x in Journal(folders.state / "journal.sqlite3").jobs() if x.input_name == "long.jsonl"][0]
    assert job.state is JobState.CANCELLED
    assert not (folders.inbox / "long.jsonl.cancel").exists()
