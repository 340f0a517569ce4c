"""The daemon's WATCHDOG=1 ping proves progress, not only a turning loop; its status line says why a
job waits on the disk or was restarted after a stall (issue [18])."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from batchd.config import Settings
from batchd.daemon import LOOP_STALL_SECONDS, Daemon
from batchd.errors import StorageError
from batchd.run.stall import StallWatch
from batchd.storage import Store
from tests.support.waiting import until


class _Pinged(Daemon):
    pings = 0
    beats = 0  # heartbeats (each offers a status line)

    def on_watchdog(self) -> None:
        self.pings += 1

    def on_status(self, text: str) -> None:
        self.beats += 1


def _daemon(make_settings: Callable[..., Settings], now: list[float]) -> _Pinged:
    return _Pinged(settings=make_settings(), clock=lambda: now[0])


def _runner(stall: StallWatch, settings: Settings) -> Any:
    """What the heartbeat reads of a running job (a runner stand-in: no backend, no lanes)."""
    job = SimpleNamespace(id="j1", input_name="big.jsonl", total=100)
    return SimpleNamespace(stall=stall, job=job, done=0, failed=0, settings=settings)


def test_the_ping_stops_when_the_job_is_stalled_past_its_restart(make_settings: Callable[..., Settings]) -> None:
    now = [100.0]
    daemon = _daemon(make_settings, now)
    assert daemon.making_progress()  # idle, the loop came round just now
    stall = StallWatch(clock=lambda: now[0], configured=50.0)
    daemon.current = _runner(stall, daemon.settings)
    now[0] += 1000
    assert daemon.making_progress()  # a job that is not stalled (its work may just be slow)
    assert stall.check(work_left=True, excused=False, job_id="j1") is not None
    assert daemon.making_progress()  # stalled: its run restarts; give it the threshold
    assert daemon.status_line().startswith("big.jsonl: stalled (no request finished for ")
    now[0] += 50
    assert not daemon.making_progress()

    async def beat() -> int:
        daemon.heartbeat_seconds = 0.01
        task = asyncio.create_task(daemon._heartbeat())
        await until(lambda: daemon.beats >= 3, timeout=5)
        assert daemon.pings == 0  # three heartbeats, no ping: the loop turns, the job does not move
        daemon.current = None
        daemon._loop_beat = now[0]
        await until(lambda: daemon.pings >= 2, timeout=5)
        daemon._loop_beat = now[0] - LOOP_STALL_SECONDS - 1  # an idle loop that stopped coming round
        seen, beats = daemon.pings, daemon.beats
        await until(lambda: daemon.beats >= beats + 3, timeout=5)
        assert daemon.pings == seen
        daemon.stop.set()
        await asyncio.wait_for(task, 5)
        return seen

    asyncio.run(beat())


def test_the_status_line_says_which_disk_it_waits_for(make_settings: Callable[..., Settings]) -> None:
    now = [0.0]
    daemon = _daemon(make_settings, now)
    full = StorageError("x", path="/var/lib/batchd/journal.sqlite3", full=True, reason="database or disk is full")
    daemon.disk.blocked(Store.JOURNAL, full)
    assert daemon.status_line().startswith("waiting for disk space on /var/lib/batchd/journal.sqlite3 since ")
    daemon.disk.recovered(Store.JOURNAL)
    daemon.disk.blocked(Store.OUTBOX, StorageError("x", path="/srv/out", reason="Read-only file system"))
    assert daemon.status_line().startswith("outbox unwritable: Read-only file system (since ")
