"""The runner when its own tasks fail or the journal refuses writes (issue [18]): never a silent stall.

A task that dies of an exception it did not handle fails the job with that text; a journal that
refuses writes pauses new work, keeps the answers in memory and commits them once it accepts writes
again, retrying on a bounded backoff (fake sleeps); ``--once`` ends the run with the reason."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from batchd.config import Settings
from batchd.errors import StorageError
from batchd.journal import Journal, ReqState, RunOutcome
from batchd.metrics import JobMetrics
from batchd.run.connect import make_backend
from batchd.run.record import Recorder
from batchd.run.runner import JobRunner
from batchd.storage import DiskWatch, Store
from tests.support.emulator import Emulator
from tests.support.fakes import FakeGpu
from tests.support.runs import started_job, write_requests
from tests.support.storage_faults import FaultyJournal, refusal
from tests.support.waiting import until

LIMIT = 30.0  # a hang fails the test here instead of hanging the suite


def _runner(settings: Settings, journal: Journal, n: int, **kw: Any) -> JobRunner:
    write_requests(settings.inbox / "job.jsonl", n)
    job = started_job(settings, journal)
    runner = JobRunner(
        settings=settings,
        journal=journal,
        backend=make_backend(settings),
        job=job,
        stop=asyncio.Event(),
        vram_source=FakeGpu(),
        **kw,
    )
    runner.monitor_tick = 0.01
    return runner


async def _run(runner: JobRunner, scenario: Callable[[JobRunner], Any] | None = None) -> RunOutcome:
    try:
        task = asyncio.create_task(runner.run())
        if scenario is not None:
            await scenario(runner)
        return await asyncio.wait_for(task, LIMIT)
    finally:
        await runner.backend.aclose()


# -- a task that dies ------------------------------------------------------------------------------


def test_a_lane_that_raises_fails_the_job_with_its_text(
    make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    settings = make_settings(backend={"lanes": 3}, context={"mode": "isolated"})
    journal = Journal(settings.journal_path)
    runner = _runner(settings, journal, 40)
    real = runner.attempts.execute
    calls = 0

    async def flaky(*a: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("boom in a lane")
        return await real(*a, **kw)

    runner.attempts.execute = flaky  # type: ignore[method-assign]
    with capture_logs() as logs:
        outcome = asyncio.run(_run(runner))
    assert outcome is RunOutcome.FAILED
    assert runner.fatal is not None and "boom in a lane" in runner.fatal.message
    assert runner.crashed is not None and runner.crashed[0].startswith("lane ")
    assert [e["task"] for e in logs if e["event"] == "runner_task_failed"] == [runner.crashed[0]]
    final = journal.end_run(runner.job.id, outcome, error=runner.fatal.as_record())
    assert final is not None and final.value == "failed"
    job = journal.job(runner.job.id)
    assert job is not None and "boom in a lane" in str(job.error)


def test_a_feeder_that_raises_does_not_leave_the_lanes_waiting(
    make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    """The issue's wedge: the feeder died (its exception kept in a task nobody awaited) and the
    lanes waited on an empty queue for ever."""
    settings = make_settings(backend={"lanes": 2}, context={"mode": "isolated"})
    journal = Journal(settings.journal_path)
    runner = _runner(settings, journal, 300)
    real = journal.take_pending
    calls = 0

    def flaky(job_id: str, limit: int) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ValueError("feeder bug")
        return real(job_id, limit)

    journal.take_pending = flaky  # type: ignore[method-assign]
    outcome = asyncio.run(_run(runner))
    assert outcome is RunOutcome.FAILED
    assert runner.fatal is not None and "feeder failed: ValueError('feeder bug')" in runner.fatal.message


def test_a_monitor_that_raises_fails_the_job_at_once(
    make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    emulator.latency = 0.01
    settings = make_settings(context={"mode": "isolated"})
    journal = Journal(settings.journal_path)
    runner = _runner(settings, journal, 400)

    class Broken(FakeGpu):
        async def read(self) -> Any:
            raise OSError("nvml went away")

    runner.vram_source = Broken()
    outcome = asyncio.run(_run(runner))
    assert outcome is RunOutcome.FAILED
    assert runner.fatal is not None and "nvml went away" in runner.fatal.message
    assert runner.done < 400  # it did not run to the end unwatched


# -- a journal that refuses writes -----------------------------------------------------------------


def test_a_full_journal_pauses_keeps_the_answers_and_commits_them_once(
    make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    emulator.latency = 0.002
    settings = make_settings(backend={"lanes": 2}, context={"mode": "isolated"})
    journal = FaultyJournal(settings.journal_path)
    disk = DiskWatch(first=0.05, most=0.2)
    n = 200
    runner = _runner(settings, journal, n, disk=disk)

    async def scenario(r: JobRunner) -> None:
        await until(lambda: r.done >= 40, timeout=LIMIT)
        journal.fault = "full"
        await until(lambda: r.recorder.blocked and r.in_flight == 0, timeout=LIMIT)
        assert disk.is_blocked(Store.JOURNAL)
        blocked = disk.waiting()
        assert blocked is not None and blocked.text().startswith(f"waiting for disk space on {settings.journal_path}")
        done_then = r.done
        await until(lambda: journal.fails >= 3, timeout=LIMIT)  # the retries go on, on their backoff
        assert r.done == done_then and r.in_flight == 0  # nothing new was asked meanwhile
        assert r.recorder.pending  # the answers received are in memory
        journal.fault = None

    with capture_logs() as logs:
        outcome = asyncio.run(_run(runner, scenario))
    assert outcome is RunOutcome.COMPLETED
    counts = journal.counts(runner.job.id)
    assert counts.get(ReqState.DONE.value) == n and counts.get(ReqState.RUNNING.value, 0) == 0
    assert len(emulator.calls) == n  # every request asked exactly once: none lost, none asked again
    events = [e["event"] for e in logs if e["event"].startswith("storage_")]
    assert events == ["storage_blocked", "storage_recovered"]
    assert not disk.is_blocked()


def test_once_the_run_ends_with_the_reason_and_nothing_is_lost(
    make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    settings = make_settings(backend={"lanes": 2}, context={"mode": "isolated"})
    journal = FaultyJournal(settings.journal_path)
    runner = _runner(settings, journal, 100, wait_for_disk=False)

    async def scenario(r: JobRunner) -> None:
        await until(lambda: r.done >= 20, timeout=LIMIT)
        journal.fault = "eio"

    with pytest.raises(StorageError) as raised:
        asyncio.run(_run(runner, scenario))
    assert raised.value.message.startswith(f"journal unwritable ({settings.journal_path}): disk I/O error")
    journal.fault = None
    assert journal.recover()["requests"] > 0  # what the next start does: the unrecorded ones run again
    counts = journal.counts(runner.job.id)
    assert counts.get(ReqState.DONE.value, 0) + counts.get(ReqState.QUEUED.value, 0) == 100


def test_the_retry_backoff_doubles_to_its_bound_on_a_fake_clock(tmp_path: Any) -> None:
    journal = FaultyJournal(tmp_path / "journal.sqlite3")
    now = [0.0]
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)
        now[0] += delay
        await asyncio.sleep(0)

    disk = DiskWatch(clock=lambda: now[0], first=0.5, most=30.0)

    async def go() -> Recorder:
        rec = Recorder(
            journal=journal,
            job_id="nojob",
            metrics=JobMetrics(),
            disk=disk,
            sleep=sleep,
            clock=lambda: now[0],
            on_blocked=lambda exc: None,
        )
        journal.fault = "full"
        assert rec.flush(force=True) is False
        assert rec.blocked and disk.is_blocked(Store.JOURNAL)
        await until(lambda: len(slept) >= 10, timeout=LIMIT)
        journal.fault = None
        await asyncio.wait_for(rec.ok.wait(), LIMIT)
        return rec

    with capture_logs() as logs:
        rec = asyncio.run(go())
    assert slept[:9] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert not rec.blocked and not disk.is_blocked()
    recovered = [e for e in logs if e["event"] == "storage_recovered"]
    assert len(recovered) == 1 and recovered[0]["blocked_seconds"] == round(sum(slept), 1)


def test_one_event_per_episode_and_the_words_status_shows() -> None:
    now = [100.0]
    disk = DiskWatch(clock=lambda: now[0], wall=lambda: 0.0)
    exc = refusal(Path("/srv/state/journal.sqlite3"), "full")
    with capture_logs() as logs:
        first = disk.blocked(Store.JOURNAL, exc)
        again = disk.blocked(Store.JOURNAL, exc)
        now[0] += 5
        disk.recovered(Store.JOURNAL)
        disk.recovered(Store.JOURNAL)
    assert first is again
    assert [e["event"] for e in logs] == ["storage_blocked", "storage_recovered"]
    assert logs[1]["blocked_seconds"] == 5.0
    assert first.text().startswith("waiting for disk space on /srv/state/journal.sqlite3 since ")
    eio = disk.blocked(Store.OUTBOX, StorageError("x", path="/srv/out", reason="Read-only file system"))
    assert eio.text().startswith("outbox unwritable: Read-only file system (since ")
