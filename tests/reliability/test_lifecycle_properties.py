"""Stateful property tests of a job's lifecycle: random scenario scripts against the real daemon.

In process (fast): the real ``Daemon.run()`` service loop, runner and journal against the
emulator; a stop is the daemon's stop event with a random grace (what SIGTERM sets), then a new
daemon on the same folders. In a subprocess (``batchd run``): ``kill -9`` at random moments, then
a restart. The invariants are in ``lifecycle_model.check_quiet``; a cancel must be published within
2 s. Profiles: ``ci`` (default, part of ``make test``, well under 90 s) and ``long``
(``BATCHD_LIFECYCLE_PROFILE=long``, run by ``bench/bench_reliability.py --lifecycle``).
Every failing example found becomes an ``@example`` below.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import example, given, settings

from batchd.config import Settings
from batchd.daemon import Daemon
from batchd.intake.claim import new_job_id
from batchd.journal import FINISHED, JobState, Journal
from tests.support.emulator import Emulator
from tests.support.factories import Folders
from tests.support.lifecycle_model import (
    CSV_FOLDER,
    PROFILE,
    Action,
    Tally,
    check_quiet,
    csv_bytes,
    jsonl_bytes,
    pipeline_toml,
    scripts,
)
from tests.support.running import REPO, batchd_cmd
from tests.support.storage_faults import StorageFaults
from tests.support.waiting import wait_for

QUIET_SECONDS = 30.0  # every job final within this once the backend answers and the disk takes writes
#: an armed storage fault whose phase does not come within this is dropped ("missed")
ARM_SECONDS = 3.0
CANCEL_SECONDS = 2.0


def _reset(emulator: Emulator) -> None:
    emulator.clear_faults()
    emulator.refuse = None
    emulator.up()
    emulator.latency = 0.04  # a job lasts long enough to be stopped, cancelled or cut off mid-way


def _folders() -> Folders:
    root = Path(tempfile.mkdtemp(prefix="lifecycle-"))
    f = Folders(root, root / "inbox", root / "outbox", root / "state")
    for p in (f.inbox, f.outbox, f.state, f.inbox / CSV_FOLDER):
        p.mkdir(parents=True)
    (root / "batchd.toml").write_text("")
    (f.inbox / CSV_FOLDER / "pipeline.toml").write_text(pipeline_toml(0))
    return f


class World:
    """The folders, the emulator and the files dropped so far; drives one scenario."""

    def __init__(self, folders: Folders, emulator: Emulator, tally: Tally, faults: StorageFaults | None = None) -> None:
        self.f = folders
        self.emu = emulator
        self.tally = tally
        self.faults = faults or StorageFaults()
        self.fault_cleared: float | None = None
        self.dropped: list[tuple[str, bytes]] = []  # (path relative to the inbox, bytes)
        self.drops = 0
        self.edits = 0

    def drop(self, rel: str, data: bytes) -> None:
        path = self.f.inbox / rel
        tmp = path.with_name(f".{path.name}.tmp")  # the watcher ignores dot files: an atomic drop
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.dropped.append((rel, data))
        self.drops += 1

    def new_drop(self, kind: str, n: int) -> None:
        tag = f"f{len(self.dropped)}"
        if kind == "csv":
            self.drop(f"{CSV_FOLDER}/{tag}.csv", csv_bytes(n, tag))
        else:
            self.drop(f"{tag}.jsonl", jsonl_bytes(n, tag))

    def redrop(self, index: int, *, edit: bool) -> None:
        csvs = [d for d in self.dropped if d[0].endswith(".csv")] if edit else self.dropped
        if not csvs:
            return
        rel, data = csvs[index % len(csvs)]
        if edit:
            self.edits += 1
            (self.f.inbox / CSV_FOLDER / "pipeline.toml").write_text(pipeline_toml(self.edits))
        if (self.f.inbox / rel).exists():
            rel = rel.replace(".", f".again{len(self.dropped)}.", 1)
        self.drop(rel, data)

    def fault(self, kind: str, count: int) -> None:
        if kind == "500":
            self.emu.fail_next(500, count)
        elif kind == "503":
            self.emu.fail_next(503, count)
        elif kind == "drop":
            self.emu.drop_next(count)
        else:
            self.emu.timeout_next(count, seconds=1.5)


# -- in process ------------------------------------------------------------------------------------


class InProcess(World):
    def settings(self) -> Settings:
        return Settings(
            inbox=self.f.inbox,
            outbox=self.f.outbox,
            state_dir=self.f.state,
            backend={
                "url": self.emu.url,
                "lanes": 2,
                "backoff_seconds": 0.02,
                "backoff_max_seconds": 0.3,
                "timeout_seconds": 1.0,
                "max_attempts": 6,
            },
            watch={"stable_seconds": 0.05, "rescan_seconds": 5, "poll_seconds": 0.05},
            context={"mode": "isolated"},
            shutdown_grace_seconds=0.5,
        )

    async def start(self) -> None:
        self.daemon = Daemon(settings=self.settings())
        self.daemon.heartbeat_seconds = 0.2
        self.task = asyncio.create_task(self.daemon.run())
        await asyncio.sleep(0.05)

    async def stop(self, grace: float) -> None:
        runner = self.daemon.current
        if runner is not None:
            runner.settings = runner.settings.model_copy(update={"shutdown_grace_seconds": grace})
        self.daemon.stop.set()
        await asyncio.wait_for(self.task, grace + 10)
        await self.daemon.aclose()

    async def cancel(self, journal: Journal, index: int) -> None:
        jobs = [j for j in journal.jobs() if j.state not in FINISHED]
        if not jobs:
            return
        job = jobs[index % len(jobs)]
        asked = time.monotonic()
        answer = journal.request_cancel(job.id).value
        if answer not in ("cancelling", "cancelled"):
            return
        while True:  # the daemon runs: it must publish within CANCEL_SECONDS
            current = journal.job(job.id)
            assert current is not None
            if current.state in FINISHED:
                break
            took = time.monotonic() - asked
            assert took <= CANCEL_SECONDS, f"cancel of a {job.state.value} job not published after {took:.1f}s"
            await asyncio.sleep(0.02)
        self.tally.cancel_latency_max = max(self.tally.cancel_latency_max, time.monotonic() - asked)

    async def refuse(self, status: int, journal: Journal) -> None:
        self.emu.down()
        await asyncio.sleep(0.3)
        self.emu.refuse = status
        self.emu.up()
        await asyncio.sleep(2.0)  # the prober asks at 0.5 s, then 1 s: it hears the refusal
        self.emu.refuse = None

    async def run(self, script: list[Action]) -> None:
        await self.start()
        journal = Journal(self.f.state / "journal.sqlite3")
        try:
            for action in script:
                self.tally.actions[action[0]] += 1
                await self.act(action, journal)
            _reset(self.emu)
            self.faults.clear()
            deadline = time.monotonic() + QUIET_SECONDS
            while [j for j in journal.jobs() if j.state not in FINISHED] or self.drops > len(
                [j for j in journal.jobs() if j.retry_of is None]
            ):
                assert time.monotonic() < deadline, f"not quiet after {QUIET_SECONDS}s: " + str(
                    [(j.id, j.state.value) for j in journal.jobs() if j.state not in FINISHED]
                )
                await asyncio.sleep(0.05)
            if self.fault_cleared is not None:  # the new invariant: final within a bound once the disk is back
                settled = time.monotonic() - self.fault_cleared
                self.tally.settle_after_fault_max = max(self.tally.settle_after_fault_max, settled)
            await self.stop(0.5)
            check_quiet(self.f.outbox, journal, drops=self.drops, tally=self.tally)
        finally:
            if not self.task.done():
                self.daemon.stop.set()
                await asyncio.gather(self.task, return_exceptions=True)
            journal.close()

    async def act(self, action: Action, journal: Journal) -> None:
        kind = action[0]
        if kind == "drop":
            self.new_drop(action[1], action[2])
        elif kind == "stop":
            await asyncio.sleep(action[2])
            await self.stop(action[1])
            await self.start()
        elif kind == "down":
            self.emu.down()
            await asyncio.sleep(action[1])
            self.emu.up()
        elif kind == "burst":
            self.fault(action[1], action[2])
        elif kind == "refuse":
            await self.refuse(action[1], journal)
        elif kind == "cancel":
            await asyncio.sleep(action[2])
            await self.cancel(journal, action[1])
        elif kind == "retry":
            done = [j for j in journal.jobs([JobState.FAILED, JobState.CANCELLED, JobState.COMPLETED])]
            if done:
                journal.add_retry(done[action[1] % len(done)], new_job_id())
        elif kind in ("redrop", "edit"):
            self.redrop(action[1], edit=kind == "edit")
        elif kind == "wait":
            await asyncio.sleep(action[1])
        elif kind == "storage":
            await self.storage_fault(action[1], action[2])

    async def storage_fault(self, pair: tuple[str, str], seconds: float) -> None:
        """The disk under one store refuses writes from its first write in the phase, for ``seconds``."""
        self.faults.arm(*pair)
        armed = time.monotonic()
        while self.faults.on is None and time.monotonic() - armed < ARM_SECONDS:
            await asyncio.sleep(0.01)
        if self.faults.on is None:
            self.faults.clear()
            self.tally.storage["missed"] += 1
            return
        self.tally.storage["@".join(pair)] += 1
        await asyncio.sleep(seconds)
        self.faults.clear()
        self.fault_cleared = time.monotonic()


TALLY = Tally()


@pytest.mark.slow
def test_lifecycle_properties_in_process(emulator: Emulator) -> None:
    @settings(settings.get_profile(PROFILE))
    @given(script=scripts())
    @example(script=[("drop", "csv", 12), ("stop", 0.0, 0.05), ("cancel", 0, 0.0)])
    @example(script=[("drop", "jsonl", 20), ("down", 0.6), ("refuse", 404), ("redrop", 0), ("edit", 0)])
    @example(script=[("drop", "jsonl", 8), ("wait", 0.5), ("retry", 0), ("redrop", 0), ("cancel", 1, 0.1)])
    @example(script=[("drop", "jsonl", 20), ("storage", ("journal", "running"), 1.0), ("drop", "csv", 5)])
    @example(script=[("drop", "csv", 6), ("storage", ("journal", "ingest"), 0.5), ("cancel", 0, 0.1)])
    @example(script=[("drop", "jsonl", 4), ("storage", ("spool", "claim"), 0.6), ("wait", 0.5)])
    @example(script=[("drop", "csv", 8), ("storage", ("journal", "claim"), 0.8), ("drop", "jsonl", 3)])
    @example(script=[("drop", "jsonl", 10), ("storage", ("journal", "finalising"), 0.7), ("wait", 0.3)])
    @example(script=[("drop", "jsonl", 6), ("storage", ("journal", "publish"), 0.8), ("redrop", 0)])
    @example(script=[("drop", "jsonl", 6), ("storage", ("outbox", "publish"), 1.0), ("cancel", 0, 0.0)])
    @example(script=[("drop", "jsonl", 24), ("storage", ("status", "any"), 1.2), ("stop", 0.2, 0.0)])
    def scenario(script: list[Action]) -> None:
        _reset(emulator)
        folders = _folders()
        faults = StorageFaults()
        faults.install()
        try:
            asyncio.run(InProcess(folders, emulator, TALLY, faults).run(script))
            TALLY.examples += 1
        except BaseException:
            TALLY.violations += 1
            raise
        finally:
            faults.uninstall()
            shutil.rmtree(folders.root, ignore_errors=True)

    scenario()
    print(TALLY.line())


# -- kill -9 (subprocess) --------------------------------------------------------------------------


class Killed(World):
    def env(self) -> dict[str, str]:
        return self.f.env(
            self.emu.url,
            BATCHD_BACKEND__LANES="2",
            BATCHD_CONTEXT__MODE="isolated",
            BATCHD_BACKEND__TIMEOUT_SECONDS="1",
            BATCHD_WATCH__STABLE_SECONDS="0.05",
            BATCHD_WATCH__POLL_SECONDS="0.05",
            BATCHD_SHUTDOWN_GRACE_SECONDS="0.5",
        )

    def start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            batchd_cmd("run"), env=self.env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def run(self, script: list[Action]) -> None:
        proc = self.start()
        try:
            for action in script:
                self.tally.actions[action[0]] += 1
                kind = action[0]
                if kind == "drop":
                    self.new_drop(action[1], action[2])
                elif kind == "kill":
                    target = self.emu.chat_count + action[1]
                    try:
                        wait_for(lambda: self.emu.chat_count >= target, timeout=3)  # noqa: B023
                    except AssertionError:
                        pass  # nothing left to call: kill it idle
                    proc.kill()
                    proc.wait()
                    proc = self.start()
                elif kind == "down":
                    self.emu.down()
                    time.sleep(action[1])
                    self.emu.up()
                elif kind == "burst":
                    self.fault(action[1], action[2])
                elif kind in ("redrop", "edit"):
                    self.redrop(action[1], edit=kind == "edit")
                elif kind == "wait":
                    time.sleep(action[1])
                elif kind == "cancel":
                    time.sleep(action[2])  # a cancel from another process, as `batchd cancel` does
                    self._cancel(action[1])
            _reset(self.emu)
            wait_for(self._quiet, timeout=QUIET_SECONDS, interval=0.1)
            proc.send_signal(signal.SIGTERM)
            # 0 once its handler is in place; a SIGTERM during interpreter start-up (the restart after
            # the last kill found nothing to do) ends it by the signal, which systemd counts as clean.
            assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
            journal = Journal(self.f.state / "journal.sqlite3")
            try:
                check_quiet(self.f.outbox, journal, drops=self.drops, tally=self.tally)
            finally:
                journal.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _journal(self) -> Journal | None:
        path = self.f.state / "journal.sqlite3"
        return Journal(path) if path.exists() else None

    def _cancel(self, index: int) -> None:
        journal = self._journal()
        if journal is None:
            return
        try:
            jobs = [j for j in journal.jobs() if j.state not in FINISHED]
            if jobs:
                journal.request_cancel(jobs[index % len(jobs)].id)
        finally:
            journal.close()

    def _quiet(self) -> bool:
        journal = self._journal()
        if journal is None:
            return False
        try:
            jobs = journal.jobs()
            return (
                not [j for j in jobs if j.state not in FINISHED]
                and len([j for j in jobs if j.retry_of is None]) == self.drops
            )
        finally:
            journal.close()


@pytest.mark.slow
def test_lifecycle_properties_kill9(emulator: Emulator) -> None:
    profile = settings.get_profile(PROFILE)

    @settings(profile, max_examples=max(2, profile.max_examples // 3))
    @given(script=scripts(kills=True))
    @example(script=[("drop", "jsonl", 24), ("kill", 5), ("drop", "csv", 10), ("kill", 3), ("redrop", 0)])
    # found: the daemon and a reader opening a fresh journal at once both ran migration 1
    @example(script=[("drop", "jsonl", 3), ("drop", "jsonl", 3)])
    # found: SIGTERM right after the restart, before the handler was installed (the test's driver)
    @example(script=[("drop", "jsonl", 10), ("burst", "drop", 5), ("edit", 6), ("kill", 19)])
    def scenario(script: list[Action]) -> None:
        _reset(emulator)
        folders = _folders()
        try:
            Killed(folders, emulator, TALLY).run(script)
            TALLY.examples += 1
        except BaseException:
            TALLY.violations += 1
            raise
        finally:
            shutil.rmtree(folders.root, ignore_errors=True)

    scenario()
    print(TALLY.line())
