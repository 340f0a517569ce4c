"""The job views: the ``batchd status --json`` / ``!status.json`` shape pinned, the cancelling state, the one filter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from batchd.journal import JobState, Journal, NewRequest, Outcome, ReqState
from batchd.status.page import DaemonState, page_data, render_json
from batchd.status.views import StatusViews, ViewState, status_views

#: the documented shape of one job in ``batchd status --json`` and ``!status.json``, in this order
KEYS = [
    "job_id",
    "input",
    "state",
    "source",
    "total",
    "done",
    "failed",
    "skipped",
    "finished",
    "progress",
    "req_per_s",
    "eta_seconds",
    "lanes",
    "lanes_mode",
    "retry_of",
    "outbox",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "priority",
    "waits",
    "behind",
    "attention",
    "preview",
    "fingerprint",
    "model_changes",
]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


def _job(journal: Journal, job_id: str, state: JobState, *, n: int = 10, done: int = 0, cancel: bool = False) -> None:
    with journal.transaction() as db:
        journal.create_job(
            job_id=job_id, db=db, state=JobState.QUEUED, input_name=f"{job_id}.jsonl", stem=job_id, kind="jsonl"
        )
        journal.insert_requests(
            job_id, [NewRequest(seq=i, line=i, custom_id=f"c{i}", body={}) for i in range(1, n + 1)], db
        )
        db.execute("UPDATE jobs SET total=? WHERE id=?", (n, job_id))
    journal.record(job_id, [Outcome(seq=i, state=ReqState.DONE, attempts=1) for i in range(1, done + 1)])
    with journal.transaction() as db:  # plain SQL: this only stages what the views should show
        db.execute("UPDATE jobs SET state=?, cancel_requested=? WHERE id=?", (state.value, int(cancel), job_id))


def test_the_json_shape_is_pinned_keys_order_and_values(journal: Journal) -> None:
    _job(journal, "run1", JobState.RUNNING, done=4, cancel=True)
    _job(journal, "q1", JobState.QUEUED)
    _job(journal, "old", JobState.COMPLETED, n=2, done=2)
    views = status_views(journal, limit=10, now=1e10)
    data = orjson.loads(orjson.dumps(views.as_dict()))
    assert list(data) == ["active", "recent"]
    assert [list(v) for v in data["active"] + data["recent"]] == [KEYS] * 3
    run = data["active"][0]
    assert (run["job_id"], run["state"], run["done"], run["finished"], run["progress"]) == (
        "run1",
        "cancelling",
        4,
        4,
        0.4,
    )
    assert data["recent"][0]["state"] == "completed" and data["recent"][0]["progress"] == 1.0
    # !status.json holds the very same lists
    page = orjson.loads(render_json(page_data(views, now=1e10, daemon=DaemonState.RUNNING)))
    assert (page["active"], page["recent"]) == (data["active"], data["recent"])


def test_cancelling_is_a_running_job_asked_to_stop(journal: Journal) -> None:
    _job(journal, "run1", JobState.RUNNING, cancel=True)
    _job(journal, "q1", JobState.QUEUED, cancel=True)  # a stop put it back before the runner saw the cancel
    _job(journal, "run2", JobState.RUNNING)
    states = {v.job_id: v.state for v in status_views(journal, limit=0).active}
    assert states == {"run1": ViewState.CANCELLING, "q1": ViewState.QUEUED, "run2": ViewState.RUNNING}


def test_the_running_filter_counts_running_and_cancelling_only(journal: Journal) -> None:
    _job(journal, "run1", JobState.RUNNING, cancel=True)
    _job(journal, "q1", JobState.QUEUED)
    _job(journal, "fin", JobState.FINALIZING)
    views = status_views(journal, limit=0)
    assert [v.job_id for v in views.running] == ["run1"] and views.waiting == 2
    assert {s for s in ViewState if s.running} == {ViewState.RUNNING, ViewState.CANCELLING}
    assert StatusViews().running == () and StatusViews().waiting == 0
