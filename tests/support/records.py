"""Journal records built by hand for tests that render them (report, security): a job with every field set."""

from __future__ import annotations

from batchd.journal import FinalStatus, Job, JobState

EVIL = "<script>alert(1)</script>"


def job_record(**kw: object) -> Job:
    """A finished job's record as the report reads it (a script tag in its input name); ``kw`` overrides."""
    fields: dict[str, object] = dict(
        id="job1",
        seq=1,
        source="inbox",
        input_name=f"cands/{EVIL}.csv",
        stem="x",
        kind="csv",
        sha256="ab",
        pipeline="cands",
        pipeline_json=None,
        prefix_json=None,
        model="gemma3:270m",
        mode="isolated",
        state=JobState.FINALIZING,
        error=None,
        duplicate_of=None,
        retry_of=None,
        cancel_requested=False,
        total=0,
        columns=[],
        created_at=1000.0,
        started_at=1000.0,
        finished_at=2000.0,
        outbox_name=None,
        metrics={},
        meta={"num_ctx": 8192},
        file_id=None,
        spool=None,
        final=FinalStatus.COMPLETED,
    )
    fields.update(kw)
    return Job(**fields)  # type: ignore[arg-type]
