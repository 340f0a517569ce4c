"""The progress watchdog (issue [18]) on a fake clock: a job whose requests stop finishing while the
backend answers is logged as ``job_stalled`` with what every lane does, its run ends to be started
again from the journal, and the WATCHDOG=1 ping stops only when the restart did not cure it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from structlog.testing import capture_logs

from batchd.config import Settings
from batchd.journal import Journal, ReqState, RunOutcome
from batchd.run.connect import make_backend
from batchd.run.runner import JobRunner
from batchd.run.stall import MIN_STALL_SECONDS, StallWatch, p99
from tests.support.emulator import Emulator
from tests.support.fakes import FakeGpu
from tests.support.runs import started_job, write_requests
from tests.support.waiting import until


def test_the_threshold_is_ten_times_p99_and_at_least_the_floor() -> None:
    now = [0.0]
    seen: list[float] = []
    watch = StallWatch(clock=lambda: now[0], latencies=lambda: seen)
    assert watch.threshold() == MIN_STALL_SECONDS == 120.0
    seen.extend([1.0] * 98 + [30.0, 31.0])
    assert p99(seen) == 31.0 and watch.threshold() == 310.0
    assert StallWatch(clock=lambda: now[0], configured=5.0, latencies=lambda: seen).threshold() == 5.0


def test_a_stall_is_reported_once_excused_waits_do_not_count_and_health_follows() -> None:
    now = [1000.0]
    watch = StallWatch(clock=lambda: now[0], configured=100.0)
    watch.lane(0, "asking request 7")
    now[0] += 90
    assert watch.check(work_left=True, excused=False, job_id="j") is None
    now[0] += 60
    assert watch.check(work_left=True, excused=True, job_id="j") is None  # the backend is down: not a stall
    now[0] += 99
    assert watch.check(work_left=True, excused=False, job_id="j") is None
    watch.progressed()
    now[0] += 99
    assert watch.check(work_left=False, excused=False, job_id="j") is None  # nothing left to ask
    now[0] += 101
    with capture_logs() as logs:
        stall = watch.check(work_left=True, excused=False, job_id="j")
        assert watch.check(work_left=True, excused=False, job_id="j") is None  # once
    assert stall is not None and stall.seconds == 101 and stall.lanes == {"lane 0": "asking request 7 for 449s"}
    assert [e["event"] for e in logs] == ["job_stalled"] and logs[0]["lanes"] == stall.lanes
    assert watch.healthy()
    now[0] += 100
    assert not watch.healthy()  # the restart did not happen or did not help: let systemd restart us


def test_a_wedged_lane_ends_the_run_for_a_restart_from_the_journal(
    make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    settings = make_settings(backend={"lanes": 2}, context={"mode": "isolated"})
    journal = Journal(settings.journal_path)
    write_requests(settings.inbox / "job.jsonl", 30)
    job = started_job(settings, journal)
    now = [5000.0]

    def runner() -> JobRunner:
        r = JobRunner(
            settings=settings,
            journal=journal,
            backend=make_backend(settings),
            job=job,
            stop=asyncio.Event(),
            vram_source=FakeGpu(),
            clock=lambda: now[0],
        )
        r.monitor_tick = 0.01
        return r

    async def go() -> tuple[JobRunner, RunOutcome, JobRunner, RunOutcome]:
        first = runner()
        real = first.attempts.execute
        wedge = asyncio.Event()  # never set: a call that never returns (no timeout fires on a fake clock)

        async def wedged(req: Any, *a: Any, **kw: Any) -> Any:
            if req.seq > 5:  # seq counts from 1: five answered, then both lanes hang
                await wedge.wait()
            return await real(req, *a, **kw)

        first.attempts.execute = wedged  # type: ignore[method-assign]
        task = asyncio.create_task(first.run())
        await until(lambda: first.in_flight == 2 and first.done == 5, timeout=20)
        now[0] += MIN_STALL_SECONDS - 1
        await asyncio.sleep(0.05)
        assert not task.done()
        now[0] += 2
        outcome = await asyncio.wait_for(task, 20)
        await first.backend.aclose()
        assert journal.end_run(job.id, outcome) is None  # back to queued, as after a restart
        assert journal.start_run(job.id, 0.0)
        second = runner()
        again = await asyncio.wait_for(second.run(), 20)
        await second.backend.aclose()
        return first, outcome, second, again

    with capture_logs() as logs:
        first, outcome, second, again = asyncio.run(go())
    assert outcome is RunOutcome.INTERRUPTED and first.restarting
    (stalled,) = [e for e in logs if e["event"] == "job_stalled"]
    assert stalled["stalled_seconds"] == MIN_STALL_SECONDS + 1
    assert sorted(stalled["lanes"].values()) == ["asking request 6 for 121s", "asking request 7 for 121s"]
    assert again is RunOutcome.COMPLETED and not second.restarting
    assert journal.counts(job.id).get(ReqState.DONE.value) == 30
