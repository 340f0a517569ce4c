"""Fail fast (``run.failfast``): a window of answers failing one way pauses the job as
``needs_attention`` (nothing discarded), ``batchd resume`` continues it where it stopped, a cancel ends it."""

from __future__ import annotations

import asyncio
import csv
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from batchd.config import Settings
from batchd.daemon import Daemon
from batchd.journal import JobState, Journal, NewRequest
from batchd.metrics import JobMetrics
from batchd.ops.commands import status_table
from batchd.run.failfast import Window
from batchd.status.views import status_views
from tests.support.emulator import Emulator
from tests.support.factories import Folders
from tests.support.waiting import until


def window(tmp_path: Path, **preview: Any) -> tuple[Window, JobMetrics, Journal]:
    j = Journal(tmp_path / "j.sqlite3")
    with j.transaction() as db:
        j.create_job(job_id="a", db=db, state=JobState.QUEUED, input_name="a", stem="a", kind="jsonl")
        j.insert_requests("a", [NewRequest(seq=1, line=1, custom_id="c1", body={})], db)
    settings = Settings(inbox=tmp_path, outbox=tmp_path, state_dir=tmp_path, preview=preview)
    m = JobMetrics()
    job = j.job("a")
    assert job is not None
    return Window(journal=j, job=job, metrics=m, settings=lambda: settings), m, j


def answer(m: JobMetrics, ok: int = 0, **failed: int) -> None:
    for _ in range(ok):
        m.count_outcome(True)
    for code, n in failed.items():
        for _ in range(n):
            m.count_outcome(False, code)


def test_one_code_above_the_ratio_in_a_window_trips_it(tmp_path: Path) -> None:
    w, m, j = window(tmp_path, rows=100, fail_fast_ratio=0.95)
    answer(m, ok=4, invalid_reply=95)
    assert w.check() is None  # 99 answers: no window yet
    answer(m, ok=1)
    assert w.check() is None  # 95 of 100 is not above 0.95
    answer(m, ok=2, invalid_reply=49, timeout=49)
    assert w.check() is None  # 98 % failed, but no single code above the ratio
    answer(m, ok=3, invalid_reply=97)
    why = w.check()
    assert why is not None and why["code"] == "invalid_reply" and why["failed"] == 97 and why["window"] == 100
    assert j.job("a").attention["code"] == "invalid_reply"  # type: ignore[union-attr]


def test_rows_zero_turns_it_off(tmp_path: Path) -> None:
    w, m, _ = window(tmp_path, rows=0)
    answer(m, invalid_reply=1000)
    assert w.check() is None


SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "strengths": {"type": "string", "pattern": "^never$"}},
    "required": ["score", "strengths"],
}


def test_a_job_whose_replies_all_fail_the_schema_pauses_then_resumes_where_it_stopped(
    make_settings: Callable[..., Any], emulator: Emulator, folders: Folders
) -> None:
    emulator.latency = 0.002
    told = folders.root / "told.txt"
    command = [sys.executable, "-c", f"import os; open({str(told)!r}, 'a').write(os.environ['BATCHD_STATUS'] + '\\n')"]
    settings = make_settings(
        notify={"command": command},
        pipeline={"format": SCHEMA, "reply_retries": 0, "user_template": "{q}"},
        preview={"rows": 100},
        status_page={"interval_seconds": 0.5},
        context={"mode": "isolated"},
    )
    daemon = Daemon(settings=settings)
    total = 2000
    with (folders.root / "rows.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["q"])
        w.writerows([[f"question {i}"] for i in range(total)])
    seen: dict[str, Any] = {}

    def paused() -> Any:
        jobs = daemon.journal.jobs([JobState.QUEUED])
        return jobs[0] if jobs and jobs[0].attention and daemon.current is None else None

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run())
        (folders.root / "rows.csv").rename(folders.inbox / "rows.csv")
        job = await until(paused, timeout=60)
        seen["first"] = daemon.journal.counts(job.id)
        seen["attention"] = job.attention
        await until(lambda: (folders.outbox / "rows.preview" / "attention.json").exists(), timeout=10)
        seen["preview"] = orjson.loads((folders.outbox / "rows.preview" / "attention.json").read_bytes())
        seen["table"] = status_table(status_views(daemon.journal, limit=5, schedule=settings.schedule))
        assert daemon.journal.resume_attention(job.id)  # what `batchd resume JOB` does
        daemon.wake()
        await until(lambda: (p := paused()) is not None and daemon.journal.counts(p.id) != seen["first"], timeout=60)
        seen["second"] = daemon.journal.counts(job.id)
        await until(lambda: told.exists() and told.read_text().count("needs_attention") == 2, timeout=10)
        assert daemon.journal.request_cancel(job.id).value == "cancelled"  # a cancel ends it
        daemon.wake()
        await until(lambda: (folders.outbox / "rows").exists(), timeout=30)
        await until(lambda: "cancelled" in told.read_text(), timeout=10)
        daemon.stop.set()
        assert await task == 0
        await daemon.aclose()

    asyncio.run(scenario())
    first, second = seen["first"], seen["second"]
    assert 100 <= first["failed"] <= 200, first  # stopped itself after about 100 rows
    assert first.get("done", 0) == 0 and first["queued"] == total - first["failed"]  # nothing discarded
    assert second["failed"] - first["failed"] >= 100 and second["failed"] < 450  # went on where it stopped
    assert emulator.chat_count == second["failed"]  # nothing sent twice
    why = seen["attention"]
    assert why["code"] == "invalid_reply" and len(why["samples"]) == 3
    assert all(s["custom_id"] and s["message"] for s in why["samples"])
    assert seen["preview"]["code"] == "invalid_reply"
    assert "needs_attention" in seen["table"] and "invalid_reply" in seen["table"]
    metrics = orjson.loads((folders.outbox / "rows" / "metrics.json").read_bytes())
    assert metrics["status"] == "cancelled"
    # a notification per pause (batch.needs_attention), then the final one
    assert told.read_text().splitlines() == ["needs_attention", "needs_attention", "cancelled"]
