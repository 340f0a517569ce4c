"""Whose turn (``run.turns``) over a real journal on a fake wall clock: priorities from the pipeline,
the default and the operator, aging, the yield question the runner asks, and the status's run order."""

from __future__ import annotations

from pathlib import Path

import orjson

from batchd.config import Settings
from batchd.journal import JobState, Journal, NewRequest
from batchd.metrics import JobMetrics
from batchd.ops.commands import status_table
from batchd.run.turns import Turns
from batchd.status.views import status_views

HOUR = 3600.0


class Wall:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def add_job(j: Journal, job_id: str, n: int, *, created: float, pipeline_priority: int | None = None) -> None:
    with j.transaction() as db:
        j.create_job(
            job_id=job_id,
            db=db,
            state=JobState.QUEUED,
            input_name=f"{job_id}.jsonl",
            stem=job_id,
            kind="jsonl",
            pipeline_json=orjson.dumps({"priority": pipeline_priority}).decode(),
        )
        j.insert_requests(job_id, [NewRequest(seq=i, line=i, custom_id=f"c{i}", body={}) for i in range(n)], db)
        db.execute("UPDATE jobs SET created_at=?, model='m' WHERE id=?", (created, job_id))


def turns(tmp_path: Path, wall: Wall, **schedule: object) -> tuple[Journal, Turns, Settings]:
    j = Journal(tmp_path / "j.sqlite3")
    settings = Settings(inbox=tmp_path, outbox=tmp_path, state_dir=tmp_path, schedule=schedule)
    return j, Turns(j, lambda: settings, wall=wall), settings


def test_priority_sources_and_the_operator_override(tmp_path: Path) -> None:
    wall = Wall()
    j, t, _ = turns(tmp_path, wall, default_priority=1)
    add_job(j, "root", 5, created=wall.t)  # the default: 1
    add_job(j, "folder", 500, created=wall.t, pipeline_priority=3)
    add_job(j, "low", 1, created=wall.t, pipeline_priority=-2)
    assert t.next_job(ingest_first=True).id == "folder"  # type: ignore[union-attr]
    assert j.set_priority("low", 9)
    assert t.next_job(ingest_first=True).id == "low"  # type: ignore[union-attr]
    assert {e.id: e.priority for e in t.entries()} == {"root": 1, "folder": 3, "low": 9}


def test_aging_lifts_a_starved_big_job_and_the_running_small_one_yields(tmp_path: Path) -> None:
    wall = Wall()
    j, t, settings = turns(tmp_path, wall, max_wait_minutes=60)
    add_job(j, "big", 20_000, created=wall.t)
    add_job(j, "small", 10, created=wall.t + 1)
    wall.t += 60
    small = t.next_job(ingest_first=True)
    assert small is not None and small.id == "small"
    assert j.start_run("small", wall.t)
    ask = t.yield_check(small, JobMetrics())
    assert ask() is None  # the big one has waited a minute: the small one keeps the runner
    wall.t += HOUR  # ...an hour later (a stream of small jobs), the big one has aged
    assert ask() == "aged"
    j.end_run("small", _interrupted())
    big = t.next_job(ingest_first=True)
    assert big is not None and big.id == "big"
    assert [e.lifted for e in t.entries() if e.id == "big"] == [True]
    assert j.start_run("big", wall.t)
    add_job(j, "tiny", 1, created=wall.t)
    assert t.yield_check(big, JobMetrics())() is None  # lifted: not sent back by the next small one
    # the status lists the queue in run order, with why each job waits
    views = status_views(j, limit=5, now=wall.t, schedule=settings.schedule)
    assert [(v.job_id, v.waits, v.behind) for v in views.active] == [
        ("big", None, None),
        ("tiny", "aged", "big"),  # the running job was lifted by aging
        ("small", "smaller", "tiny"),
    ]
    assert "tiny.jsonl  (waits: aged, behind big)" in status_table(views)


def test_fifo_keeps_claim_order_and_never_preempts(tmp_path: Path) -> None:
    wall = Wall()
    j, t, _ = turns(tmp_path, wall, policy="fifo")
    add_job(j, "big", 1000, created=wall.t)
    add_job(j, "small", 1, created=wall.t, pipeline_priority=100)
    big = t.next_job(ingest_first=True)
    assert big is not None and big.id == "big"
    assert j.start_run("big", wall.t)
    assert t.yield_check(big, JobMetrics())() is None


def test_a_paused_job_is_skipped(tmp_path: Path) -> None:
    wall = Wall()
    j, t, _ = turns(tmp_path, wall)
    add_job(j, "paused", 1, created=wall.t)
    add_job(j, "other", 100, created=wall.t)
    j.pause_for_attention("paused", {"code": "invalid_reply", "message": "x"})
    assert t.next_job(ingest_first=True).id == "other"  # type: ignore[union-attr]
    assert j.resume_attention("paused") and not j.resume_attention("paused")
    assert t.next_job(ingest_first=True).id == "paused"  # type: ignore[union-attr]


def _interrupted():  # type: ignore[no-untyped-def]
    from batchd.journal import RunOutcome

    return RunOutcome.INTERRUPTED
