"""The SQLite journal: the single source of truth for files, jobs and requests.

One class owns the connection. WAL, ``busy_timeout`` and ``synchronous=FULL``
are set on connect; every read-then-write runs in ``transaction()``
(``BEGIN IMMEDIATE``). Rows are written in batches, never one commit per row.
sqlite3 errors are translated here and nowhere else.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import orjson

from batchd.errors import StorageError


class JobState(str, Enum):
    INGESTING = "ingesting"
    QUEUED = "queued"
    RUNNING = "running"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DUPLICATE = "duplicate"


FINISHED = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.DUPLICATE)
ACTIVE = (JobState.QUEUED, JobState.RUNNING, JobState.FINALIZING)


class FinalStatus(str, Enum):
    """What a finished job's outbox says (``jobs.final``; the job state once published)."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DUPLICATE = "duplicate"


class RunOutcome(str, Enum):
    """How one run of a job ended (the runner's verdict; ``Journal.end_run`` applies it)."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # a stop: the job goes back to the queue


class CancelAnswer(str, Enum):
    """``Journal.request_cancel``: what a cancel did."""

    CANCELLING = "cancelling"  # running or ingesting: the runner / ingest stops within a second
    CANCELLED = "cancelled"  # had not run: finalizing now
    MISSING = "missing"
    ALREADY_FINALIZING = "already_finalizing"
    ALREADY_COMPLETED = "already_completed"
    ALREADY_FAILED = "already_failed"
    ALREADY_CANCELLED = "already_cancelled"
    ALREADY_DUPLICATE = "already_duplicate"


class ReqState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INVALID = "invalid"
    SKIPPED = "skipped"


SCHEMA_VERSION = 3

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        inbox_path TEXT NOT NULL,
        spool TEXT,
        sha256 TEXT,
        size INTEGER,
        mtime_ns INTEGER,
        state TEXT NOT NULL,
        claimed_at REAL NOT NULL
    );
    CREATE INDEX files_inbox ON files(inbox_path, size, mtime_ns);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        file_id INTEGER REFERENCES files(id),
        source TEXT NOT NULL DEFAULT 'inbox',
        input_name TEXT NOT NULL,
        stem TEXT NOT NULL,
        kind TEXT NOT NULL,
        sha256 TEXT,
        pipeline TEXT,
        pipeline_json TEXT,
        prefix_json TEXT,
        model TEXT,
        mode TEXT,
        state TEXT NOT NULL,
        error TEXT,
        duplicate_of TEXT,
        retry_of TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL DEFAULT 0,
        columns_json TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        outbox_name TEXT,
        metrics_json TEXT,
        meta_json TEXT
    );
    CREATE INDEX jobs_state ON jobs(state, seq);
    CREATE INDEX jobs_sha ON jobs(sha256);
    CREATE TABLE requests (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        line INTEGER,
        custom_id TEXT,
        body BLOB,
        row BLOB,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        result BLOB,
        error BLOB,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        finished_at REAL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX requests_state ON requests(job_id, state, seq);
    CREATE TABLE samples (
        job_id TEXT NOT NULL,
        t REAL NOT NULL,
        done INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        ctx_tokens INTEGER,
        vram_used REAL,
        trims INTEGER,
        lanes INTEGER
    );
    CREATE INDEX samples_job ON samples(job_id, t);
    """,
    # 2: the final status gets its own column (it was meta_json's "final"); the duplicate key
    # becomes sha256 + a hash of the effective job definition (``work_key``).
    2: """
    ALTER TABLE jobs ADD COLUMN final TEXT;
    ALTER TABLE jobs ADD COLUMN work_key TEXT;
    CREATE INDEX jobs_work ON jobs(work_key);
    """,
    # 3: the HTTP API's tables join the migrations (they were created ad hoc, IF NOT EXISTS).
    3: """
    CREATE TABLE IF NOT EXISTS api_files (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        filename TEXT NOT NULL,
        bytes INTEGER NOT NULL DEFAULT 0,
        sha256 TEXT,
        spool TEXT,
        batch_id TEXT,
        created_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS api_batches (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL UNIQUE,
        input_file_id TEXT NOT NULL,
        output_file_id TEXT NOT NULL,
        error_file_id TEXT NOT NULL,
        metadata TEXT,
        created_at REAL NOT NULL,
        validated_at REAL,
        cancelling_at REAL
    );
    """,
}

#: request states that still owe work
_UNFINISHED = "('queued','running')"


@dataclass(frozen=True)
class Job:
    id: str
    seq: int
    source: str
    input_name: str
    stem: str
    kind: str
    sha256: str | None
    pipeline: str | None
    pipeline_json: str | None
    prefix_json: str | None
    model: str | None
    mode: str | None
    state: JobState
    error: dict[str, Any] | None
    duplicate_of: str | None
    retry_of: str | None
    cancel_requested: bool
    total: int
    columns: list[str]
    created_at: float
    started_at: float | None
    finished_at: float | None
    outbox_name: str | None
    metrics: dict[str, Any]
    meta: dict[str, Any]
    file_id: int | None
    spool: str | None
    final: FinalStatus | None = None
    work_key: str | None = None


@dataclass(frozen=True)
class Request:
    job_id: str
    seq: int
    line: int | None
    custom_id: str | None
    body: dict[str, Any] | None
    row: dict[str, Any] | None
    state: ReqState
    attempts: int
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(frozen=True)
class NewRequest:
    seq: int
    line: int | None
    custom_id: str | None
    body: dict[str, Any] | None
    row: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Outcome:
    """The final word on one request, written in batches by the runner."""

    seq: int
    state: ReqState
    attempts: int
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


_JOB_COLS = (
    "j.id, j.seq, j.source, j.input_name, j.stem, j.kind, j.sha256, j.pipeline, j.pipeline_json, "
    "j.prefix_json, j.model, j.mode, j.state, j.error, j.duplicate_of, j.retry_of, j.cancel_requested, "
    "j.total, j.columns_json, j.created_at, j.started_at, j.finished_at, j.outbox_name, j.metrics_json, "
    "j.meta_json, j.file_id, f.spool, j.final, j.work_key"
)
_REQ_COLS = "job_id, seq, line, custom_id, body, row, state, attempts, result, error, prompt_tokens, completion_tokens"


def _loads(raw: Any) -> Any:
    return None if raw is None else orjson.loads(raw)


def _dumps(value: Any) -> bytes | None:
    return None if value is None else orjson.dumps(value)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            # FULL: a committed batch survives power loss, not only kill -9; one fsync per batch.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open journal {path}: {exc}") from exc
        except OSError as exc:
            raise StorageError(f"cannot create journal folder for {path}: {exc}") from exc

    # -- plumbing ---------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StorageError(f"journal busy or unwritable: {exc}") from exc
        try:
            yield self._db
        except sqlite3.Error as exc:
            self._db.execute("ROLLBACK")
            raise StorageError(f"journal write failed: {exc}") from exc
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StorageError(f"journal commit failed: {exc}") from exc

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"journal read failed: {exc}") from exc

    def _migrate(self) -> None:
        """Each step reads the version and moves it on in one BEGIN IMMEDIATE transaction, so two
        processes opening a fresh journal at once (the daemon and ``batchd status``) cannot both run it."""
        while True:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StorageError(f"journal schema {version} is newer than this batchd ({SCHEMA_VERSION})")
                if version == SCHEMA_VERSION:
                    self._db.execute("COMMIT")
                    return
                target = version + 1
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                if target == 2:
                    self._backfill_final()
                self._db.execute(f"PRAGMA user_version={target}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _backfill_final(self) -> None:
        """Version 1 kept the final status in meta_json; move it to its column (inside the migration)."""
        for job_id, meta in self._db.execute("SELECT id, meta_json FROM jobs").fetchall():
            final = (_loads(meta) or {}).get("final")
            if final in FinalStatus._value2member_map_:
                self._db.execute("UPDATE jobs SET final=? WHERE id=?", (final, job_id))

    def integrity_check(self) -> str:
        return str(self._query("PRAGMA integrity_check")[0][0])

    # -- start-up ---------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """After a crash: running rows go back to queued; half-ingested jobs start over."""
        with self.transaction() as db:
            reqs = db.execute(
                "UPDATE requests SET state='queued' WHERE state='running'"
            ).rowcount
            jobs = db.execute("UPDATE jobs SET state='queued' WHERE state='running'").rowcount
            ingesting = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state='ingesting'")]
            for job_id in ingesting:
                db.execute("DELETE FROM requests WHERE job_id=?", (job_id,))
        return {"requests": reqs, "jobs": jobs, "ingesting": len(ingesting)}

    # -- files and jobs ----------------------------------------------------------

    def find_claim(self, inbox_path: bytes, size: int, mtime_ns: int) -> int | None:
        # inbox paths are stored as bytes: a file name need not be valid UTF-8
        rows = self._query(
            "SELECT id FROM files WHERE inbox_path=? AND size=? AND mtime_ns=?", (inbox_path, size, mtime_ns)
        )
        return int(rows[0][0]) if rows else None

    def add_file(self, *, name: str, inbox_path: bytes, spool: str | None, sha256: str | None,
                 size: int, mtime_ns: int, db: sqlite3.Connection) -> int:
        cur = db.execute(
            "INSERT INTO files (name, inbox_path, spool, sha256, size, mtime_ns, state, claimed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, 'claimed', ?)",
            (name, inbox_path, spool, sha256, size, mtime_ns, time.time()),
        )
        return int(cur.lastrowid or 0)

    def unlinked_claims(self) -> list[tuple[int, bytes, int, int]]:
        """Claims whose inbox file may still exist (crash between commit and unlink)."""
        rows = self._query("SELECT id, inbox_path, size, mtime_ns FROM files WHERE state='claimed'")
        return [(int(a), bytes(b), int(c), int(d)) for a, b, c, d in rows]

    def mark_file_removed(self, file_id: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE files SET state='removed' WHERE id=?", (file_id,))

    def create_job(self, *, job_id: str, db: sqlite3.Connection, state: JobState, input_name: str,
                   stem: str, kind: str, file_id: int | None = None, source: str = "inbox",
                   sha256: str | None = None, pipeline: str | None = None, pipeline_json: str | None = None,
                   error: dict[str, Any] | None = None, duplicate_of: str | None = None,
                   retry_of: str | None = None, meta: dict[str, Any] | None = None,
                   final: FinalStatus | None = None) -> None:
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
        db.execute(
            "INSERT INTO jobs (id, seq, file_id, source, input_name, stem, kind, sha256, pipeline, "
            "pipeline_json, state, error, duplicate_of, retry_of, created_at, meta_json, final) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, seq, file_id, source, input_name, stem, kind, sha256, pipeline, pipeline_json,
             state.value, _dumps(error), duplicate_of, retry_of, time.time(), _dumps(meta or {}),
             final.value if final else None),
        )

    def reject_file(self, *, job_id: str, name: str, inbox_path: bytes, size: int, mtime_ns: int,
                    input_name: str, stem: str, pipeline: str | None, error: dict[str, Any]) -> None:
        """A dropped file that cannot become a job: a file row and a failed job, to be published."""
        with self.transaction() as db:
            file_id = self.add_file(name=name, inbox_path=inbox_path, spool=None, sha256=None, size=size,
                                    mtime_ns=mtime_ns, db=db)
            db.execute("UPDATE files SET state='rejected' WHERE id=?", (file_id,))
            self.create_job(job_id=job_id, db=db, state=JobState.FINALIZING, input_name=input_name, stem=stem,
                            kind="rejected", file_id=file_id, pipeline=pipeline, error=error,
                            final=FinalStatus.FAILED)

    # -- the job lifecycle: every transition one transaction with its guard ------------------
    #
    #   ingesting --finish_ingest--> queued --start_run--> running --end_run--> finalizing --published--> final
    #       |  (cancel / invalid / duplicate)                  |  (stop)  --> queued
    #       +--------------------> finalizing                  +--------> finalizing (completed only when no
    #                                                                     request is queued or running)

    def claim_work(self, job_id: str, work_key: str) -> str | None:
        """Ingest's first step: record the job's duplicate key; the id of an earlier job that did or
        will do the same work (same bytes, same effective definition), else None. One transaction."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET work_key=? WHERE id=?", (work_key, job_id))
            rows = db.execute(
                "SELECT id FROM jobs WHERE work_key=? AND id != ? "
                "AND state IN ('queued','running','finalizing','completed') "
                "AND (state != 'finalizing' OR final IS 'completed' OR final IS NULL) ORDER BY seq LIMIT 1",
                (work_key, job_id)).fetchall()
            if not rows:
                return None
            twin = str(rows[0][0])
            db.execute("UPDATE jobs SET state='finalizing', final='duplicate', duplicate_of=? "
                       "WHERE id=? AND state='ingesting'", (twin, job_id))
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
            db.execute("UPDATE jobs SET state='finalizing', final='failed', error=?, total=? "
                       "WHERE id=? AND state='ingesting'", (_dumps(error), kept, job_id))

    def finish_ingest(self, job_id: str, *, total: int, columns: list[str], model: str, mode: str,
                      prefix_json: str | None) -> JobState:
        """Ingest is done: ``queued``, or ``finalizing`` (cancelled) when a cancel came in meanwhile."""
        with self.transaction() as db:
            row = db.execute("SELECT state, cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row[0] != JobState.INGESTING.value:
                return JobState(row[0]) if row else JobState.FINALIZING
            cancelled = bool(row[1])
            if cancelled:
                db.execute(f"UPDATE requests SET state='skipped' WHERE job_id=? AND state IN {_UNFINISHED}", (job_id,))
            state = JobState.FINALIZING if cancelled else JobState.QUEUED
            db.execute("UPDATE jobs SET state=?, final=?, total=?, columns_json=?, model=?, mode=?, prefix_json=? "
                       "WHERE id=?", (state.value, FinalStatus.CANCELLED.value if cancelled else None, total,
                                      _dumps(columns), model, mode, prefix_json, job_id))
            return state

    def cancel_requested(self, job_id: str) -> bool:
        rows = self._query("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,))
        return bool(rows and rows[0][0])

    def start_run(self, job_id: str, started_at: float) -> bool:
        """queued (or running after a crash) -> running; False when the job is past that."""
        with self.transaction() as db:
            return db.execute(
                "UPDATE jobs SET state='running', started_at=COALESCE(started_at, ?) "
                "WHERE id=? AND state IN ('queued','running')", (started_at, job_id)).rowcount == 1

    def end_run(self, job_id: str, outcome: RunOutcome, *, error: dict[str, Any] | None = None,
                meta: dict[str, Any] | None = None) -> FinalStatus | None:
        """Apply a run's outcome in one transaction; the final status, or None when the job went back
        to ``queued`` (stopped with work left). ``completed`` is given only when no request is queued
        or running: a run that claims it with work left goes back to the queue instead."""
        with self.transaction() as db:
            left = db.execute(f"SELECT COUNT(*) FROM requests WHERE job_id=? AND state IN {_UNFINISHED}",
                              (job_id,)).fetchone()[0]
            final: FinalStatus | None
            if outcome is RunOutcome.FAILED:
                record = _dumps({"code": (error or {}).get("code", "job_error"),
                                 "message": (error or {}).get("message", "the job failed")})
                db.execute(f"UPDATE requests SET state='failed', error=?, finished_at=? "
                           f"WHERE job_id=? AND state IN {_UNFINISHED}", (record, time.time(), job_id))
                final = FinalStatus.FAILED
            elif not left:
                final = FinalStatus.COMPLETED  # a cancel or stop that came after the last request
            elif outcome is RunOutcome.CANCELLED:
                db.execute(f"UPDATE requests SET state='skipped' WHERE job_id=? AND state IN {_UNFINISHED}",
                           (job_id,))
                final = FinalStatus.CANCELLED
            else:
                db.execute("UPDATE requests SET state='queued' WHERE job_id=? AND state='running'", (job_id,))
                db.execute("UPDATE jobs SET state='queued' WHERE id=?", (job_id,))
                return None
            sets = ["state='finalizing'", "final=?", "finished_at=?"]
            args: list[Any] = [final.value, time.time()]
            if error is not None:
                sets.append("error=?")
                args.append(_dumps(error))
            if meta is not None:
                sets.append("meta_json=?")
                args.append(_dumps(meta))
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
            db.execute(f"UPDATE requests SET state='skipped' WHERE job_id=? AND state IN {_UNFINISHED}", (job_id,))
            db.execute("UPDATE jobs SET state='finalizing', final='cancelled', finished_at=? WHERE id=?",
                       (time.time(), job_id))
            return CancelAnswer.CANCELLED

    def published(self, job_id: str, final: FinalStatus, finished_at: float) -> None:
        """finalizing -> the final status, once the outbox folder is in place."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET state=?, final=?, finished_at=COALESCE(finished_at, ?) WHERE id=?",
                       (final.value, final.value, finished_at, job_id))

    def add_retry(self, job: Job, new_id: str) -> int:
        """A new queued job holding copies of ``job``'s failed and skipped requests; 0 (and no job) if none."""
        with self.transaction() as db:
            self.create_job(job_id=new_id, db=db, state=JobState.QUEUED, input_name=job.input_name, stem=job.stem,
                            kind=job.kind, file_id=job.file_id, source=job.source, sha256=job.sha256,
                            pipeline=job.pipeline, pipeline_json=job.pipeline_json, retry_of=job.id,
                            meta={"retry_of": job.id})
            n = int(db.execute(
                "INSERT INTO requests (job_id, seq, line, custom_id, body, row, state) "
                "SELECT ?, seq, line, custom_id, body, row, 'queued' FROM requests "
                "WHERE job_id=? AND state IN ('failed','skipped')", (new_id, job.id)).rowcount)
            if n == 0:
                db.execute("DELETE FROM jobs WHERE id=?", (new_id,))
                return 0
            db.execute("UPDATE jobs SET total=?, prefix_json=?, model=?, mode=?, columns_json=? WHERE id=?",
                       (n, job.prefix_json, job.model, job.mode, _dumps(job.columns), new_id))
            return n

    def insert_requests(self, job_id: str, rows: Iterable[NewRequest], db: sqlite3.Connection) -> int:
        sql = ("INSERT INTO requests (job_id, seq, line, custom_id, body, row, state, error) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        invalid, queued = ReqState.INVALID.value, ReqState.QUEUED.value  # hoisted: this loop runs 170,000 times
        dumps = orjson.dumps
        batch = [(job_id, r.seq, r.line, r.custom_id, None if r.body is None else dumps(r.body),
                  None if r.row is None else dumps(r.row), queued if r.error is None else invalid,
                  None if r.error is None else dumps(r.error)) for r in rows]
        db.executemany(sql, batch)
        return len(batch)

    def update_job(self, job_id: str, db: sqlite3.Connection | None = None, **fields: Any) -> None:
        """A job's data (metrics, meta, outbox name); its state changes only through the transitions."""
        if "state" in fields or "final" in fields:
            raise ValueError("a job's state changes through the lifecycle methods, not update_job")
        encode = {"error": _dumps, "metrics": _dumps, "columns": _dumps, "meta": _dumps}
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
        rows = self._query(
            f"SELECT {_JOB_COLS} FROM jobs j LEFT JOIN files f ON f.id=j.file_id WHERE j.id=?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs_starting_with(self, prefix: str, limit: int = 6) -> list[Job]:
        """Jobs whose id starts with ``prefix`` (matched literally: no pattern characters), oldest first."""
        if not prefix:
            return []
        rows = self._query(
            f"SELECT {_JOB_COLS} FROM jobs j LEFT JOIN files f ON f.id=j.file_id "
            "WHERE substr(j.id, 1, ?) = ? ORDER BY j.seq LIMIT ?", (len(prefix), prefix, limit))
        return [_job(r) for r in rows]

    def jobs(self, states: Sequence[JobState] | None = None, limit: int = 1000) -> list[Job]:
        where, args = "", []
        if states:
            where = f"WHERE j.state IN ({','.join('?' * len(states))})"
            args = [s.value for s in states]
        rows = self._query(
            f"SELECT {_JOB_COLS} FROM jobs j LEFT JOIN files f ON f.id=j.file_id {where} "
            f"ORDER BY j.seq DESC LIMIT ?", (*args, limit))
        return [_job(r) for r in rows]

    def next_job(self) -> Job | None:
        """The oldest job with work left, in claim order."""
        rows = self._query(
            f"SELECT {_JOB_COLS} FROM jobs j LEFT JOIN files f ON f.id=j.file_id "
            "WHERE j.state IN ('running','queued','finalizing','ingesting') ORDER BY j.seq LIMIT 1")
        return _job(rows[0]) if rows else None

    # -- requests -----------------------------------------------------------------

    def take_pending(self, job_id: str, limit: int) -> list[Request]:
        """The next queued requests in input order, marked running in the same transaction."""
        with self.transaction() as db:
            rows = db.execute(
                f"SELECT {_REQ_COLS} FROM requests WHERE job_id=? AND state='queued' ORDER BY seq LIMIT ?",
                (job_id, limit)).fetchall()
            if rows:
                db.execute(
                    "UPDATE requests SET state='running' WHERE job_id=? AND state='queued' AND seq BETWEEN ? AND ?",
                    (job_id, rows[0][1], rows[-1][1]))
        return [_request(r) for r in rows]

    def record(self, job_id: str, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "UPDATE requests SET state=?, attempts=?, result=?, error=?, prompt_tokens=?, "
                "completion_tokens=?, finished_at=? WHERE job_id=? AND seq=?",
                [(o.state.value, o.attempts, _dumps(o.result), _dumps(o.error), o.prompt_tokens,
                  o.completion_tokens, now, job_id, o.seq) for o in outcomes])

    def requeue(self, job_id: str, seqs: Iterable[int]) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE requests SET state='queued' WHERE job_id=? AND seq=? AND state='running'",
                           [(job_id, s) for s in seqs])

    def skip_unfinished(self, job_id: str, db: sqlite3.Connection | None = None) -> None:
        sql = "UPDATE requests SET state='skipped' WHERE job_id=? AND state IN ('queued','running')"
        if db is not None:
            db.execute(sql, (job_id,))
            return
        with self.transaction() as tx:
            tx.execute(sql, (job_id,))

    def counts(self, job_id: str) -> dict[str, int]:
        rows = self._query("SELECT state, COUNT(*) FROM requests WHERE job_id=? GROUP BY state", (job_id,))
        return {str(s): int(n) for s, n in rows}

    def iter_requests(self, job_id: str, states: Sequence[ReqState] | None = None,
                      chunk: int = 2000) -> Iterator[Request]:
        """Stream a job's requests in input order, a chunk at a time (flat memory)."""
        where = ""
        extra: list[Any] = []
        if states:
            where = f" AND state IN ({','.join('?' * len(states))})"
            extra = [s.value for s in states]
        last = -1
        while True:
            rows = self._query(
                f"SELECT {_REQ_COLS} FROM requests WHERE job_id=? AND seq>?{where} ORDER BY seq LIMIT ?",
                (job_id, last, *extra, chunk))
            if not rows:
                return
            for r in rows:
                yield _request(r)
            last = rows[-1][1]

    # -- the HTTP API's records (api_files, api_batches; ``api/store.py`` gives them types) --------

    _API_FILE_COLS = "seq, id, role, filename, bytes, sha256, spool, batch_id, created_at"
    _API_BATCH_COLS = ("seq, id, job_id, input_file_id, output_file_id, error_file_id, metadata, created_at, "
                       "validated_at, cancelling_at")

    def api_add_input(self, *, file_id: str, filename: str, size: int, sha256: str, spool: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO api_files (id, role, filename, bytes, sha256, spool, created_at) "
                       "VALUES (?, 'input', ?, ?, ?, ?, ?)", (file_id, filename, size, sha256, spool, time.time()))

    def api_file(self, file_id: str) -> tuple[Any, ...] | None:
        rows = self._query(f"SELECT {self._API_FILE_COLS} FROM api_files WHERE id=?", (file_id,))
        return tuple(rows[0]) if rows else None

    def api_files(self, *, after: str | None, limit: int) -> list[tuple[Any, ...]]:
        """Newest first; ``after`` is the last id of the previous page."""
        return [tuple(r) for r in self._query(
            f"SELECT {self._API_FILE_COLS} FROM api_files WHERE seq < COALESCE((SELECT seq FROM api_files "
            "WHERE id=?), 9223372036854775807) ORDER BY seq DESC LIMIT ?", (after, limit))]

    def api_delete_file(self, file_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM api_files WHERE id=?", (file_id,))

    def api_add_batch(self, db: sqlite3.Connection, *, batch_id: str, job_id: str, input_file_id: str,
                      output_file_id: str, error_file_id: str, metadata: str | None) -> None:
        """Inside the caller's transaction (the one that creates the job)."""
        now = time.time()
        db.execute("INSERT INTO api_batches (id, job_id, input_file_id, output_file_id, error_file_id, metadata, "
                   "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (batch_id, job_id, input_file_id, output_file_id, error_file_id, metadata, now))
        for file_id, role in ((output_file_id, "output"), (error_file_id, "error")):
            db.execute("INSERT INTO api_files (id, role, filename, batch_id, created_at) VALUES (?, ?, ?, ?, ?)",
                       (file_id, role, f"{batch_id}_{role}.jsonl", batch_id, now))

    def api_batch(self, batch_id: str) -> tuple[Any, ...] | None:
        rows = self._query(f"SELECT {self._API_BATCH_COLS} FROM api_batches WHERE id=?", (batch_id,))
        return tuple(rows[0]) if rows else None

    def api_batches(self, *, after: str | None, limit: int) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._query(
            f"SELECT {self._API_BATCH_COLS} FROM api_batches WHERE seq < COALESCE((SELECT seq FROM api_batches "
            "WHERE id=?), 9223372036854775807) ORDER BY seq DESC LIMIT ?", (after, limit))]

    # retention (batchd.api.retention)

    def api_batches_before(self, cutoff: float) -> list[tuple[str, str]]:
        return [(str(a), str(b)) for a, b in self._query(
            "SELECT id, job_id FROM api_batches WHERE created_at < ?", (cutoff,))]

    def api_inputs_before(self, cutoff: float) -> list[tuple[str, str | None]]:
        return [(str(a), b) for a, b in self._query(
            "SELECT id, spool FROM api_files WHERE role='input' AND created_at < ?", (cutoff,))]

    def api_delete_batch(self, batch_id: str) -> None:
        """The batch and its output file records; its input upload expires on its own."""
        with self.transaction() as db:
            db.execute("DELETE FROM api_files WHERE batch_id=?", (batch_id,))
            db.execute("DELETE FROM api_batches WHERE id=?", (batch_id,))

    def api_input_bytes(self) -> int:
        return int(self._query("SELECT COALESCE(SUM(bytes), 0) FROM api_files WHERE role='input'")[0][0])

    def api_batch_job_ids(self) -> list[str]:
        return [str(r[0]) for r in self._query("SELECT job_id FROM api_batches")]

    def api_mark(self, batch_id: str, column: str, value: float) -> None:
        """Set ``validated_at`` / ``cancelling_at`` once (the first time wins)."""
        if column not in ("validated_at", "cancelling_at"):
            raise ValueError(column)
        with self.transaction() as db:
            db.execute(f"UPDATE api_batches SET {column}=COALESCE({column}, ?) WHERE id=?", (value, batch_id))

    # -- samples (time series for the report) ---------------------------------------

    def add_sample(self, job_id: str, *, done: int, failed: int, ctx_tokens: int | None,
                   vram_used: float | None, trims: int, lanes: int) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (job_id, time.time(), done, failed, ctx_tokens, vram_used, trims, lanes))

    def samples(self, job_id: str, since: float | None = None
                ) -> list[tuple[float, int, int, int | None, float | None, int, int]]:
        """A job's time series, oldest first; ``since`` keeps only the recent stretch (in SQL, via the index)."""
        return [tuple(r) for r in self._query(
            "SELECT t, done, failed, ctx_tokens, vram_used, trims, lanes FROM samples WHERE job_id=? AND t>=? "
            "ORDER BY t", (job_id, since if since is not None else float("-inf")))]


def _job(r: Sequence[Any]) -> Job:
    return Job(
        id=r[0], seq=r[1], source=r[2], input_name=r[3], stem=r[4], kind=r[5], sha256=r[6], pipeline=r[7],
        pipeline_json=r[8], prefix_json=r[9], model=r[10], mode=r[11], state=JobState(r[12]),
        error=_loads(r[13]), duplicate_of=r[14], retry_of=r[15], cancel_requested=bool(r[16]), total=r[17],
        columns=_loads(r[18]) or [], created_at=r[19], started_at=r[20], finished_at=r[21],
        outbox_name=r[22], metrics=_loads(r[23]) or {}, meta=_loads(r[24]) or {}, file_id=r[25], spool=r[26],
        final=FinalStatus(r[27]) if r[27] else None, work_key=r[28],
    )


def _request(r: Sequence[Any]) -> Request:
    return Request(
        job_id=r[0], seq=r[1], line=r[2], custom_id=r[3], body=_loads(r[4]), row=_loads(r[5]),
        state=ReqState(r[6]), attempts=r[7], result=_loads(r[8]), error=_loads(r[9]),
        prompt_tokens=r[10], completion_tokens=r[11],
    )
