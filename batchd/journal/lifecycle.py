"""The job lifecycle: every state transition of a job, each one transaction with its guard.

::

       ingesting --finish_ingest--> queued --start_run--> running --end_run--> finalizing --published--> final
           |  (cancel / invalid / duplicate)                  |  (stop)  --> queued
           +--------------------> finalizing                  +--------> finalizing (completed only when no
                                                                         request is queued or running)
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from batchd.journal.connection import Connection
from batchd.journal.records import (
    FINISHED,
    CancelAnswer,
    FinalStatus,
    Job,
    JobState,
    RunOutcome,
)
from batchd.journal.rows import UNFINISHED, dump_json


class Lifecycle(Connection):
    """The transitions (``Journal`` mixes this in); a read-then-write never leaves its transaction."""

    # -- start-up ---------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """After a crash: running rows go back to queued; half-ingested jobs start over."""
        with self.transaction() as db:
            reqs = db.execute("UPDATE requests SET state='queued' WHERE state='running'").rowcount
            jobs = db.execute("UPDATE jobs SET state='queued' WHERE state='running'").rowcount
            ingesting = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state='ingesting'")]
            for job_id in ingesting:
                db.execute("DELETE FROM requests WHERE job_id=?", (job_id,))
        return {"requests": reqs, "jobs": jobs, "ingesting": len(ingesting)}

    def add_file(
        self,
        *,
        name: str,
        inbox_path: bytes,
        spool: str | None,
        sha256: str | None,
        size: int,
        mtime_ns: int,
        db: sqlite3.Connection,
        owner_uid: int | None = None,
    ) -> int:
        cur = db.execute(
            "INSERT INTO files (name, inbox_path, spool, sha256, size, mtime_ns, state, claimed_at, owner_uid) "
            "VALUES (?, ?, ?, ?, ?, ?, 'claimed', ?, ?)",
            (name, inbox_path, spool, sha256, size, mtime_ns, time.time(), owner_uid),
        )
        return int(cur.lastrowid or 0)

    def create_job(
        self,
        *,
        job_id: str,
        db: sqlite3.Connection,
        state: JobState,
        input_name: str,
        stem: str,
        kind: str,
        file_id: int | None = None,
        source: str = "inbox",
        sha256: str | None = None,
        pipeline: str | None = None,
        pipeline_json: str | None = None,
        error: dict[str, Any] | None = None,
        duplicate_of: str | None = None,
        retry_of: str | None = None,
        meta: dict[str, Any] | None = None,
        final: FinalStatus | None = None,
    ) -> None:
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
        db.execute(
            "INSERT INTO jobs (id, seq, file_id, source, input_name, stem, kind, sha256, pipeline, "
            "pipeline_json, state, error, duplicate_of, retry_of, created_at, meta_json, final) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                seq,
                file_id,
                source,
                input_name,
                stem,
                kind,
                sha256,
                pipeline,
                pipeline_json,
                state.value,
                dump_json(error),
                duplicate_of,
                retry_of,
                time.time(),
                dump_json(meta or {}),
                final.value if final else None,
            ),
        )

    def reject_file(
        self,
        *,
        job_id: str,
        name: str,
        inbox_path: bytes,
        size: int,
        mtime_ns: int,
        input_name: str,
        stem: str,
        pipeline: str | None,
        error: dict[str, Any],
    ) -> None:
        """A dropped file that cannot become a job: a file row and a failed job, to be published."""
        with self.transaction() as db:
            file_id = self.add_file(
                name=name, inbox_path=inbox_path, spool=None, sha256=None, size=size, mtime_ns=mtime_ns, db=db
            )
            db.execute("UPDATE files SET state='rejected' WHERE id=?", (file_id,))
            self.create_job(
                job_id=job_id,
                db=db,
                state=JobState.FINALIZING,
                input_name=input_name,
                stem=stem,
                kind="rejected",
                file_id=file_id,
                pipeline=pipeline,
                error=error,
                final=FinalStatus.FAILED,
            )

    def claim_work(self, job_id: str, work_key: str) -> str | None:
        """Ingest's first step: record the job's duplicate key; the id of an earlier job that did or
        will do the same work (same bytes, same effective definition), else None. One transaction."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET work_key=? WHERE id=?", (work_key, job_id))
            rows = db.execute(
                "SELECT id FROM jobs WHERE work_key=? AND id != ? "
                "AND state IN ('queued','running','finalizing','completed') "
                "AND (state != 'finalizing' OR final IS 'completed' OR final IS NULL) ORDER BY seq LIMIT 1",
                (work_key, job_id),
            ).fetchall()
            if not rows:
                return None
            twin = str(rows[0][0])
            db.execute(
                "UPDATE jobs SET state='finalizing', final='duplicate', duplicate_of=? "
                "WHERE id=? AND state='ingesting'",
                (twin, job_id),
            )
            return twin

    def restart_ingest(self, job_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM requests WHERE job_id=?", (job_id,))

    def fail_ingest(self, job_id: str, error: dict[str, Any], *, keep_invalid: bool = False) -> None:
        """The file cannot become a job: published failed with ``error``. No requests, or (``keep_invalid``:
        too many invalid lines) only the invalid ones, which errors.jsonl lists."""
        with self.transaction() as db:
            if keep_invalid:
                db.execute("DELETE FROM requests WHERE job_id=? AND state != 'invalid'", (job_id,))
            else:
                db.execute("DELETE FROM requests WHERE job_id=?", (job_id,))
            kept = db.execute("SELECT COUNT(*) FROM requests WHERE job_id=?", (job_id,)).fetchone()[0]
            db.execute(
                "UPDATE jobs SET state='finalizing', final='failed', error=?, total=? WHERE id=? AND state='ingesting'",
                (dump_json(error), kept, job_id),
            )

    def finish_ingest(
        self, job_id: str, *, total: int, columns: list[str], model: str, mode: str, prefix_json: str | None
    ) -> JobState:
        """Ingest is done: ``queued``, or ``finalizing`` (cancelled) when a cancel came in meanwhile."""
        with self.transaction() as db:
            row = db.execute("SELECT state, cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row[0] != JobState.INGESTING.value:
                return JobState(row[0]) if row else JobState.FINALIZING
            cancelled = bool(row[1])
            if cancelled:
                db.execute(f"UPDATE requests SET state='skipped' WHERE job_id=? AND state IN {UNFINISHED}", (job_id,))
            state = JobState.FINALIZING if cancelled else JobState.QUEUED
            db.execute(
                "UPDATE jobs SET state=?, final=?, total=?, columns_json=?, model=?, mode=?, prefix_json=? WHERE id=?",
                (
                    state.value,
                    FinalStatus.CANCELLED.value if cancelled else None,
                    total,
                    dump_json(columns),
                    model,
                    mode,
                    prefix_json,
                    job_id,
                ),
            )
            return state

    def cancel_requested(self, job_id: str) -> bool:
        rows = self._query("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,))
        return bool(rows and rows[0][0])

    def start_run(self, job_id: str, started_at: float) -> bool:
        """queued (or running after a crash) -> running; False when the job is past that."""
        with self.transaction() as db:
            return (
                db.execute(
                    "UPDATE jobs SET state='running', started_at=COALESCE(started_at, ?) "
                    "WHERE id=? AND state IN ('queued','running')",
                    (started_at, job_id),
                ).rowcount
                == 1
            )

    def end_run(
        self,
        job_id: str,
        outcome: RunOutcome,
        *,
        error: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> FinalStatus | None:
        """Apply a run's outcome in one transaction; the final status, or None when the job went back
        to ``queued`` (stopped with work left). ``completed`` is given only when no request is queued
        or running: a run that claims it with work left goes back to the queue instead."""
        with self.transaction() as db:
            left = db.execute(
                f"SELECT COUNT(*) FROM requests WHERE job_id=? AND state IN {UNFINISHED}", (job_id,)
            ).fetchone()[0]
            final: FinalStatus | None
            if outcome is RunOutcome.FAILED:
                record = dump_json(
                    {
                        "code": (error or {}).get("code", "job_error"),
                        "message": (error or {}).get("message", "the job failed"),
                    }
                )
                db.execute(
                    f"UPDATE requests SET state='failed', error=?, finished_at=? "
                    f"WHERE job_id=? AND state IN {UNFINISHED}",
                    (record, time.time(), job_id),
                )
                final = FinalStatus.FAILED
            elif not left:
                final = FinalStatus.COMPLETED  # a cancel or stop that came after the last request
            elif outcome is RunOutcome.CANCELLED:
                db.execute(f"UPDATE requests SET state='skipped' WHERE job_id=? AND state IN {UNFINISHED}", (job_id,))
                final = FinalStatus.CANCELLED
            else:
                db.execute("UPDATE requests SET state='queued' WHERE job_id=? AND state='running'", (job_id,))
                db.execute("UPDATE jobs SET state='queued' WHERE id=?", (job_id,))
                return None
            sets = ["state='finalizing'", "final=?", "finished_at=?"]
            args: list[Any] = [final.value, time.time()]
            if error is not None:
                sets.append("error=?")
                args.append(dump_json(error))
            if meta is not None:
                sets.append("meta_json=?")
                args.append(dump_json(meta))
            db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?", (*args, job_id))
            return final

    def request_cancel(self, job_id: str) -> CancelAnswer:
        """Cancel a job (``batchd cancel``, the API). Running or ingesting: flag it, the runner or ingest
        stops; queued: finalizing as cancelled now. Read and write in one transaction."""
        with self.transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return CancelAnswer.MISSING
            state = JobState(row[0])
            if state in FINISHED or state is JobState.FINALIZING:
                return CancelAnswer(f"already_{state.value}")
            db.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))
            if state in (JobState.RUNNING, JobState.INGESTING):
                return CancelAnswer.CANCELLING
            db.execute(f"UPDATE requests SET state='skipped' WHERE job_id=? AND state IN {UNFINISHED}", (job_id,))
            db.execute(
                "UPDATE jobs SET state='finalizing', final='cancelled', finished_at=? WHERE id=?", (time.time(), job_id)
            )
            return CancelAnswer.CANCELLED

    def published(self, job_id: str, final: FinalStatus, finished_at: float) -> None:
        """finalizing -> the final status, once the outbox folder is in place."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET state=?, final=?, finished_at=COALESCE(finished_at, ?) WHERE id=?",
                (final.value, final.value, finished_at, job_id),
            )

    def add_retry(self, job: Job, new_id: str) -> int:
        """A new queued job holding copies of ``job``'s failed and skipped requests; 0 (and no job) if none."""
        with self.transaction() as db:
            self.create_job(
                job_id=new_id,
                db=db,
                state=JobState.QUEUED,
                input_name=job.input_name,
                stem=job.stem,
                kind=job.kind,
                file_id=job.file_id,
                source=job.source,
                sha256=job.sha256,
                pipeline=job.pipeline,
                pipeline_json=job.pipeline_json,
                retry_of=job.id,
                meta={"retry_of": job.id},
            )
            n = int(
                db.execute(
                    "INSERT INTO requests (job_id, seq, line, custom_id, body, row, state, url) "
                    "SELECT ?, seq, line, custom_id, body, row, 'queued', url FROM requests "
                    "WHERE job_id=? AND state IN ('failed','skipped')",
                    (new_id, job.id),
                ).rowcount
            )
            if n == 0:
                db.execute("DELETE FROM jobs WHERE id=?", (new_id,))
                return 0
            db.execute(
                "UPDATE jobs SET total=?, prefix_json=?, model=?, mode=?, columns_json=? WHERE id=?",
                (n, job.prefix_json, job.model, job.mode, dump_json(job.columns), new_id),
            )
            return n
