"""A member's hostile ``pipeline.toml`` fails that member's file, never the honest file beside it or the daemon."""

from __future__ import annotations

import os
from collections.abc import Callable

import orjson

from batchd.config import Settings
from batchd.intake.claim import Claimer
from batchd.journal import FinalStatus, Job, JobState, Journal, NewClaim
from tests.support.emulator import Emulator
from tests.support.factories import Folders
from tests.support.running import run_batchd, run_daemon_once


def _jobs(settings: Settings) -> dict[str, Job]:
    journal = Journal(settings.journal_path)
    try:
        return {j.input_name: j for j in journal.jobs()}
    finally:
        journal.close()


def _honest(folders: Folders) -> None:
    (folders.inbox / "honest.jsonl").write_bytes(
        orjson.dumps(
            {
                "custom_id": "a",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gemma3:4b", "messages": [{"role": "user", "content": "hi"}]},
            }
        )
        + b"\n"
    )


def _hostile(folders: Folders, toml: str, name: str = "m") -> None:
    folder = folders.inbox / name
    folder.mkdir()
    (folder / "pipeline.toml").write_text(toml)
    (folder / "rows.csv").write_text("text\nhello\n")


def _assert_outcome(settings: Settings, hostile: str = "m/rows.csv") -> Job:
    jobs = _jobs(settings)
    assert jobs["honest.jsonl"].state is JobState.COMPLETED, jobs
    bad = jobs[hostile]
    assert bad.state is JobState.FAILED, bad
    assert bad.error is not None and bad.error.get("message")
    return bad


def test_an_integer_over_64_bits_fails_its_file_and_not_the_queue(
    folders: Folders, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    _hostile(folders, 'user_template = "{text}"\noptions = {x = 99999999999999999999999}\n')
    _honest(folders)
    run_daemon_once(settings)
    bad = _assert_outcome(settings)
    assert "64" in str(bad.error) or "too large" in str(bad.error), bad.error
    run_daemon_once(settings)  # a restart is clean


def test_a_job_stuck_ingesting_with_a_poisonous_definition_is_failed_at_start_up(
    folders: Folders, make_settings: Callable[..., Settings]
) -> None:
    """A journal written before the fix: the claim recorded a pipeline that cannot be hashed."""
    settings = make_settings()
    Claimer(settings=settings, journal=Journal(settings.journal_path))  # makes the spool
    spool = settings.state_dir / "spool" / "old.csv"
    spool.write_text("text\nhello\n")
    journal = Journal(settings.journal_path)
    try:
        journal.claim(
            NewClaim(
                job_id="old",
                name="rows.csv",
                inbox_path=b"m/rows.csv",
                spool=str(spool),
                sha256="0" * 64,
                size=11,
                mtime_ns=1,
                input_name="m/rows.csv",
                stem="rows",
                kind="csv",
                pipeline="m",
                pipeline_json='{"name":"m","user_template":"{text}","options":{"x":99999999999999999999999}}',
                owner_uid=0,
            )
        )
    finally:
        journal.close()
    _honest(folders)
    run_daemon_once(settings)
    jobs = _jobs(settings)
    assert jobs["m/rows.csv"].state is JobState.FAILED
    assert jobs["m/rows.csv"].final in (FinalStatus.FAILED, None)
    assert jobs["honest.jsonl"].state is JobState.COMPLETED
    run_daemon_once(settings)


def _claim_batch(settings: Settings) -> int:
    """The claim task's one batch, as the daemon's worker thread runs it, over everything in the inbox."""
    import asyncio

    from batchd.intake.inbox import scan
    from batchd.intake.worker import Intake

    intake = Intake(settings=lambda: settings, stop=asyncio.Event(), on_claimed=lambda: None)
    journal = Journal(settings.journal_path)
    try:
        return intake._claim_batch(journal, scan(settings.inbox, ()))
    finally:
        journal.close()


def test_nesting_deeper_than_the_recursion_limit_is_the_files_error_record(
    folders: Folders, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    _hostile(folders, "x = " + "[" * 5000 + "]" * 5000 + "\n", name="a")
    deep = "{y = " * 260 + "1" + "}" * 260
    _hostile(folders, f'user_template = "{{text}}"\noptions = {{z = {deep}}}\n', name="b")
    _honest(folders)
    for _ in range(3):  # rescans: each finds the same files again
        _claim_batch(settings)
    journal = Journal(settings.journal_path)
    assert len(journal.jobs()) == 3  # one record per file, not one per rescan
    journal.close()
    jobs = _jobs(settings)
    assert set(jobs) == {"a/rows.csv", "b/rows.csv", "honest.jsonl"}, jobs
    assert jobs["honest.jsonl"].state is JobState.QUEUED
    for name in ("a/rows.csv", "b/rows.csv"):
        error = jobs[name].error
        assert jobs[name].final is FinalStatus.FAILED and error is not None, jobs[name]
        assert "nested too deeply" in error["message"], error
    spool = sorted(p.name for p in (settings.state_dir / "spool").iterdir())
    assert spool == [f"{jobs['honest.jsonl'].id}.jsonl"]
    run_daemon_once(settings)
    _assert_outcome(settings, "a/rows.csv")
    _assert_outcome(settings, "b/rows.csv")


def test_one_member_cannot_queue_more_than_max_queued_requests_per_owner(
    folders: Folders, make_settings: Callable[..., Settings]
) -> None:
    from batchd.intake.inbox import scan
    from tests.support.factories import write_jsonl

    settings = make_settings(limits={"max_queued_requests_per_owner": 5})
    journal = Journal(settings.journal_path)
    claimer = Claimer(settings=settings, journal=journal)
    try:
        states = {}
        for start, (name, n) in enumerate((("a.jsonl", 3), ("b.jsonl", 3), ("c.jsonl", 2))):
            write_jsonl(folders.inbox / name, n, start=start * 10)
            (cand,) = [c for c in scan(settings.inbox, ()) if c.path.name == name]
            claimed = claimer.claim(cand)
            assert claimed is not None
            states[name] = claimed.state
        assert states == {"a.jsonl": JobState.QUEUED, "b.jsonl": JobState.FINALIZING, "c.jsonl": JobState.QUEUED}
        b = {j.input_name: j for j in journal.jobs()}["b.jsonl"]
        assert b.final is FinalStatus.FAILED and b.error is not None and b.error["code"] == "owner_limit"
        assert "max_queued_requests_per_owner" in b.error["message"] and f"uid {os.getuid()}" in b.error["message"]
        assert journal.counts(b.id) == {}
    finally:
        journal.close()


def test_the_outbox_folder_name_is_reserved_at_claim(folders: Folders, make_settings: Callable[..., Settings]) -> None:
    """A member's rejected ``m/export.csv`` publishes at once; it must not take ``outbox/export/`` from the
    honest ``export.csv`` claimed before it and still queued."""
    settings = make_settings()
    (folders.inbox / "export.csv").write_text("text\nhello\n")
    os.utime(folders.inbox / "export.csv", (1_000_000, 1_000_000))
    _hostile(folders, "not toml at all [[[\n")
    os.rename(folders.inbox / "m" / "rows.csv", folders.inbox / "m" / "export.csv")
    run_daemon_once(settings)
    jobs = _jobs(settings)
    honest, rejected = jobs["export.csv"], jobs["m/export.csv"]
    assert honest.state is JobState.COMPLETED and rejected.state is JobState.FAILED
    assert (honest.outbox_name, rejected.outbox_name) == ("export", "export.2")
    assert orjson.loads((folders.outbox / "export" / "metrics.json").read_bytes())["job_id"] == honest.id


def test_a_same_file_re_drop_is_claimed_again(folders: Folders, make_settings: Callable[..., Settings]) -> None:
    """The same path, size and mtime as an earlier claim (``cp -p`` twice): not skipped without a record."""
    from batchd.intake.inbox import scan

    settings = make_settings()
    journal = Journal(settings.journal_path)
    claimer = Claimer(settings=settings, journal=journal)
    try:
        for _ in range(2):
            _honest(folders)
            os.utime(folders.inbox / "honest.jsonl", ns=(1_000_000_000, 1_000_000_000))
            (cand,) = scan(settings.inbox, ())
            claimed = claimer.claim(cand)
            assert claimed is not None
            assert not (folders.inbox / "honest.jsonl").exists()
        first, second = sorted(journal.jobs(), key=lambda j: j.seq)
        assert second.final is FinalStatus.DUPLICATE and second.duplicate_of == first.id
    finally:
        journal.close()


def test_run_once_exits_0_with_a_hostile_pipeline_beside_an_honest_file(folders: Folders, emulator: Emulator) -> None:
    """The issue's reproduction as an operator sees it: ``batchd run --once`` (exit 1 before), twice."""
    _hostile(folders, 'user_template = "{text}"\noptions = {x = 99999999999999999999999}\n')
    _honest(folders)
    for _ in range(2):
        proc = run_batchd(folders.env(emulator.url), "run", "--once")
        assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = orjson.loads((folders.outbox / "rows" / "metrics.json").read_bytes())
    assert metrics["status"] == "failed"
    assert orjson.loads((folders.outbox / "honest" / "metrics.json").read_bytes())["status"] == "completed"
