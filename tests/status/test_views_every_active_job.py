"""Issue 22 item 6: thousands of tiny files never hide the running job or the oldest queued ones."""

from __future__ import annotations

from pathlib import Path

from batchd.journal import JobState, Journal, NewClaim
from batchd.status.views import status_views


def _queue(journal: Journal, n: int) -> list[str]:
    ids = []
    for i in range(n):
        job_id = f"j{i:05d}"
        journal.claim(
            NewClaim(
                job_id=job_id,
                name=f"f{i}.jsonl",
                inbox_path=f"f{i}.jsonl".encode(),
                spool=f"/nonexistent/{job_id}.jsonl",
                sha256=f"{i:064d}",
                size=10,
                mtime_ns=i,
                input_name=f"f{i}.jsonl",
                stem=f"f{i}",
                kind="jsonl",
                pipeline=None,
                pipeline_json=None,
            )
        )
        journal.finish_ingest(job_id, total=1, columns=[], model="m", mode="isolated", prefix_json=None)
        ids.append(job_id)
    return ids


def test_views_hold_every_running_and_queued_job_beyond_the_cap(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        ids = _queue(journal, 1_050)
        assert journal.start_run(ids[0], 1.0)
        views = status_views(journal, limit=20)
        assert len(views.active) == 1_050
        assert [v.job_id for v in views.running] == [ids[0]]
        assert views.active[1].job_id == ids[1]  # the oldest queued one, next to run
        assert {j.id for j in journal.jobs([JobState.QUEUED], limit=None)} == set(ids[1:])
    finally:
        journal.close()
