"""``output_expires_after`` honoured, ``expires_at`` truthful, expired batches gone from ``batchd status``."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from batchd.api.retention import DAY, Retention
from batchd.api.store import ApiStore
from batchd.config import Settings
from batchd.journal import JobState, Journal
from batchd.status.views import status_views


def test_a_batch_expires_when_it_asked_and_leaves_the_status_list(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(api={"retention_days": 30})
    journal = Journal(settings.journal_path)
    now = [time.time()]
    try:
        store = ApiStore(journal)
        retention = Retention(settings=settings, journal=journal, store=store, clock=lambda: now[0])
        for job_id, asked in (("jsoon", 7200), ("jdefault", None)):
            folder = settings.outbox / job_id
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_bytes(orjson.dumps({"job_id": job_id}))
            with journal.transaction() as db:
                journal.create_job(
                    job_id=job_id, db=db, state=JobState.COMPLETED, input_name="api:a", stem=job_id, kind="jsonl",
                    source="api", meta={"expires_after": asked},
                )  # fmt: skip
                store.add_batch(
                    db, batch_id=f"batch_{job_id}", job_id=job_id, input_file_id="file-a",
                    output_file_id=f"file-o{job_id}", error_file_id=f"file-e{job_id}", metadata=None,
                )  # fmt: skip
            journal.update_job(job_id, outbox_name=job_id)
        assert retention.lifetime(journal.job("jsoon")) == 7200
        assert retention.lifetime(journal.job("jdefault")) == 30 * DAY
        listed = {v.job_id for v in status_views(journal, limit=10).recent}
        assert listed == {"jsoon", "jdefault"}
        now[0] += 3600
        assert retention.expire() == 0
        now[0] += 3601
        assert retention.expire() == 1
        assert store.batch("batch_jsoon") is None and not (settings.outbox / "jsoon").exists()
        assert store.batch("batch_jdefault") is not None and (settings.outbox / "jdefault").exists()
        assert {v.job_id for v in status_views(journal, limit=10).recent} == {"jdefault"}
    finally:
        journal.close()
