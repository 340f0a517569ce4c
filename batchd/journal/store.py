"""``Journal``, the class callers hold: a file claimed as a job, jobs read back, requests taken, recorded
and requeued in batches, the report's samples; the transitions (``lifecycle``) and the API's tables
(``api_tables``) and the team's records (``team``: queue, priorities, refusals) mixed in."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from enum import Enum
from typing import Any

import orjson

from batchd.journal.api_tables import ApiRecords
from batchd.journal.lifecycle import Lifecycle
from batchd.journal.records import (
    Job,
    JobState,
    NewBatch,
    NewClaim,
    NewRequest,
    Outcome,
    ReqState,
    Request,
    Sample,
)
from batchd.journal.rows import JOB_COLS, REQ, REQ_COLS, TAKE_COLS, dump_json, job_from_row, request_from_row
from batchd.journal.team import TeamRecords


class Journal(Lifecycle, ApiRecords, TeamRecords):
    """The SQLite journal: one connection, WAL, every read-then-write in one ``transaction()``."""

    # -- files -----------------------------------------------------------------------

    def claim(self, new: NewClaim, *, batch: NewBatch | None = None) -> int | None:
        """A file becomes a job, in one transaction: its file row, the job (``ingesting``) and, for an API
        upload, its ``batch``; the file row's id. An inbox file the journal already holds (same path,
        size and mtime, not yet removed by batchd: another claimer got there first) is refused: None, and
        nothing is written; a file batchd removed and someone dropped again is a new claim.

        An upload has no inbox file to unlink: its file row is written ``removed`` at once (an inbox
        claim's becomes so after the unlink, ``mark_file_removed``)."""
        from_inbox = new.source == "inbox"
        with self.transaction() as db:
            if (
                from_inbox
                and db.execute(
                    "SELECT 1 FROM files WHERE inbox_path=? AND size=? AND mtime_ns=? AND state != 'removed'",
                    (new.inbox_path, new.size, new.mtime_ns),
                ).fetchone()
            ):
                return None
            file_id = self.add_file(
                name=new.name,
                inbox_path=new.inbox_path,
                spool=new.spool,
                sha256=new.sha256,
                size=new.size,
                mtime_ns=new.mtime_ns,
                db=db,
                owner_uid=new.owner_uid,
            )
            if not from_inbox:
                db.execute("UPDATE files SET state='removed' WHERE id=?", (file_id,))
            self.create_job(
                job_id=new.job_id,
                db=db,
                state=JobState.INGESTING,
                input_name=new.input_name,
                stem=new.stem,
                kind=new.kind,
                file_id=file_id,
                source=new.source,
                sha256=new.sha256,
                pipeline=new.pipeline,
                pipeline_json=new.pipeline_json,
                meta=new.meta,
            )
            if batch is not None:
                self.api_add_batch(db, new.job_id, batch)
        return file_id

    def find_claim(self, inbox_path: bytes, size: int, mtime_ns: int) -> int | None:
        # inbox paths are stored as bytes: a file name need not be valid UTF-8
        rows = self._query(
            # a claim whose file batchd removed is history: the same name, size and mtime again is a re-drop
            "SELECT id FROM files WHERE inbox_path=? AND size=? AND mtime_ns=? AND state != 'removed'",
            (inbox_path, size, mtime_ns),
        )
        return int(rows[0][0]) if rows else None

    def unlinked_claims(self) -> list[tuple[int, bytes, int, int]]:
        """Claims whose inbox file may still exist (crash between commit and unlink)."""
        rows = self._query("SELECT id, inbox_path, size, mtime_ns FROM files WHERE state='claimed'")
        return [(int(a), bytes(b), int(c), int(d)) for a, b, c, d in rows]

    def reserved_outbox_names(self, except_job: str | None = None) -> set[str]:
        """Outbox folder names held by jobs not yet published (reserved at claim)."""
        rows = self._query(
            "SELECT outbox_name FROM jobs WHERE outbox_name IS NOT NULL AND id IS NOT ? "
            "AND state IN ('ingesting', 'queued', 'running', 'finalizing')",
            (except_job,),
        )
        return {str(r[0]) for r in rows}

    def mark_file_removed(self, file_id: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE files SET state='removed' WHERE id=?", (file_id,))

    # -- jobs ------------------------------------------------------------------------

    def insert_requests(self, job_id: str, rows: Iterable[NewRequest], db: sqlite3.Connection) -> int:
        sql = (
            "INSERT INTO requests (job_id, seq, line, custom_id, body, row, state, error, url) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        invalid, queued = ReqState.INVALID.value, ReqState.QUEUED.value  # hoisted: this loop runs 170,000 times
        dumps = orjson.dumps
        batch = [
            (
                job_id,
                r.seq,
                r.line,
                r.custom_id,
                None if r.body is None else dumps(r.body),
                None if r.row is None else dumps(r.row),
                queued if r.error is None else invalid,
                None if r.error is None else dumps(r.error),
                r.url,
            )
            for r in rows
        ]
        db.executemany(sql, batch)
        return len(batch)

    def update_job(self, job_id: str, db: sqlite3.Connection | None = None, **fields: Any) -> None:
        """A job's data (metrics, meta, outbox name); its state changes only through the transitions."""
        if "state" in fields or "final" in fields:
            raise ValueError("a job's state changes through the lifecycle methods, not update_job")
        encode = {"error": dump_json, "metrics": dump_json, "columns": dump_json, "meta": dump_json}
        cols, args = [], []
        for key, value in fields.items():
            if isinstance(value, Enum):
                value = value.value
            if key in encode:
                value = encode[key](value)
                key = f"{key}_json" if key in ("metrics", "columns", "meta") else key
            cols.append(f"{key}=?")
            args.append(value)
        sql = f"UPDATE jobs SET {', '.join(cols)} WHERE id=?"
        if db is not None:
            db.execute(sql, (*args, job_id))
            return
        with self.transaction() as tx:
            tx.execute(sql, (*args, job_id))

    def job(self, job_id: str) -> Job | None:
        """The job with exactly this id (an operator's short form: ``jobs_starting_with``)."""
        rows = self._query(f"SELECT {JOB_COLS} FROM jobs j LEFT JOIN files f ON f.id=j.file_id WHERE j.id=?", (job_id,))
        return job_from_row(rows[0]) if rows else None

    def jobs_starting_with(self, prefix: str, limit: int = 6) -> list[Job]:
        """Jobs whose id starts with ``prefix`` (matched literally: no pattern characters), oldest first."""
        if not prefix:
            return []
        rows = self._query(
            f"SELECT {JOB_COLS} FROM jobs j LEFT JOIN files f ON f.id=j.file_id "
            "WHERE substr(j.id, 1, ?) = ? ORDER BY j.seq LIMIT ?",
            (len(prefix), prefix, limit),
        )
        return [job_from_row(r) for r in rows]

    def jobs(self, states: Sequence[JobState] | None = None, limit: int | None = 1000) -> list[Job]:
        """Jobs newest first; ``limit`` None: all of them (the running and queued ones must never be capped)."""
        where, args = "", []
        if states:
            where = f"WHERE j.state IN ({','.join('?' * len(states))})"
            args = [s.value for s in states]
        rows = self._query(
            f"SELECT {JOB_COLS} FROM jobs j LEFT JOIN files f ON f.id=j.file_id {where} ORDER BY j.seq DESC LIMIT ?",
            (*args, -1 if limit is None else limit),
        )
        return [job_from_row(r) for r in rows]

    def next_job(self) -> Job | None:
        """The oldest job with work left, in claim order."""
        rows = self._query(
            f"SELECT {JOB_COLS} FROM jobs j LEFT JOIN files f ON f.id=j.file_id "
            "WHERE j.state IN ('running','queued','finalizing','ingesting') ORDER BY j.seq LIMIT 1"
        )
        return job_from_row(rows[0]) if rows else None

    # -- requests -----------------------------------------------------------------

    def take_pending(self, job_id: str, limit: int) -> list[Request]:
        """The next queued requests in input order, marked running in the same transaction."""
        with self.transaction() as db:
            rows = db.execute(
                f"SELECT {TAKE_COLS} FROM requests WHERE job_id=? AND state='queued' ORDER BY seq LIMIT ?",
                (job_id, limit),
            ).fetchall()
            if rows:
                db.execute(
                    "UPDATE requests SET state='running' WHERE job_id=? AND state='queued' AND seq BETWEEN ? AND ?",
                    (job_id, rows[0][REQ["seq"]], rows[-1][REQ["seq"]]),
                )
        return [request_from_row(r) for r in rows]

    def record(self, job_id: str, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "UPDATE requests SET state=?, attempts=?, result=?, error=?, prompt_tokens=?, "
                "completion_tokens=?, finished_at=? WHERE job_id=? AND seq=?",
                [
                    (
                        o.state.value,
                        o.attempts,
                        dump_json(o.result),
                        dump_json(o.error),
                        o.prompt_tokens,
                        o.completion_tokens,
                        now,
                        job_id,
                        o.seq,
                    )
                    for o in outcomes
                ],
            )
            vectors = [(job_id, o.seq, o.vector) for o in outcomes if o.vector is not None]
            if vectors:
                db.executemany("INSERT OR REPLACE INTO vectors (job_id, seq, data) VALUES (?, ?, ?)", vectors)

    def requeue(self, job_id: str, seqs: Iterable[int]) -> None:
        with self.transaction() as db:
            db.executemany(
                "UPDATE requests SET state='queued' WHERE job_id=? AND seq=? AND state='running'",
                [(job_id, s) for s in seqs],
            )

    def skip_unfinished(self, job_id: str, db: sqlite3.Connection | None = None) -> None:
        sql = "UPDATE requests SET state='skipped' WHERE job_id=? AND state IN ('queued','running')"
        if db is not None:
            db.execute(sql, (job_id,))
            return
        with self.transaction() as tx:
            tx.execute(sql, (job_id,))

    def queued_of_owner(self, owner_uid: int, except_job: str) -> int:
        """Requests still to run (queued or running) in the active jobs of files ``owner_uid`` dropped."""
        rows = self._query(
            "SELECT COUNT(*) FROM requests r JOIN jobs j ON j.id = r.job_id JOIN files f ON f.id = j.file_id "
            "WHERE f.owner_uid = ? AND j.id != ? AND j.state IN ('ingesting', 'queued', 'running') "
            "AND r.state IN ('queued', 'running')",
            (owner_uid, except_job),
        )
        return int(rows[0][0])

    def counts(self, job_id: str) -> dict[str, int]:
        rows = self._query("SELECT state, COUNT(*) FROM requests WHERE job_id=? GROUP BY state", (job_id,))
        return {str(s): int(n) for s, n in rows}

    def iter_requests(
        self, job_id: str, states: Sequence[ReqState] | None = None, chunk: int = 2000
    ) -> Iterator[Request]:
        """Stream a job's requests in input order, a chunk at a time (flat memory)."""
        where = ""
        extra: list[Any] = []
        if states:
            where = f" AND state IN ({','.join('?' * len(states))})"
            extra = [s.value for s in states]
        last = -1
        while True:
            rows = self._query(
                f"SELECT {REQ_COLS} FROM requests WHERE job_id=? AND seq>?{where} ORDER BY seq LIMIT ?",
                (job_id, last, *extra, chunk),
            )
            if not rows:
                return
            for r in rows:
                yield request_from_row(r)
            last = rows[-1][REQ["seq"]]

    # -- samples (time series for the report) ---------------------------------------

    def add_sample(
        self,
        job_id: str,
        *,
        done: int,
        failed: int,
        ctx_tokens: int | None,
        vram_used: float | None,
        trims: int,
        lanes: int,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, time.time(), done, failed, ctx_tokens, vram_used, trims, lanes),
            )

    def samples(self, job_id: str, since: float | None = None) -> list[Sample]:
        """A job's time series, oldest first; ``since`` keeps only the recent stretch (in SQL, via the index)."""
        return [
            Sample(**r)
            for r in self._query_named(
                "SELECT t, done, failed, ctx_tokens, vram_used, trims, lanes FROM samples WHERE job_id=? AND t>=? "
                "ORDER BY t",
                (job_id, since if since is not None else float("-inf")),
            )
        ]
