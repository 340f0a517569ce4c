"""The journal's schema: the DDL of each version and the migrations keyed on ``PRAGMA user_version``."""

from __future__ import annotations

import sqlite3

from batchd.errors import StorageError
from batchd.journal.records import FinalStatus
from batchd.journal.rows import load_json

SCHEMA_VERSION = 7

MIGRATIONS: dict[int, str] = {
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
    # The uid that owned each claimed inbox file: who may cancel it from the share, whose limit it counts
    # against. NULL for API uploads and for files claimed before this version.
    4: """
    ALTER TABLE files ADD COLUMN owner_uid INTEGER;
    """,
    # 5: reserved for issue [22], which needed no migration in the end.
    5: "",
    # 6, the people around a job: who goes first (``priority``: set by the operator or an API batch, NULL:
    # the pipeline's or the default; ``waiting_since``: when it last went back to the queue, for aging;
    # ``lifted``: it runs because it had aged; ``preemptions``: how often it
    # yielded to another), a job paused for attention (``attention_json``: why, with
    # sample errors), the ``.cancel`` files refused (the status page shows them) and the notifications
    # owed (journaled, retried).
    6: """
    ALTER TABLE jobs ADD COLUMN priority INTEGER;
    ALTER TABLE jobs ADD COLUMN waiting_since REAL;
    ALTER TABLE jobs ADD COLUMN lifted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN preemptions INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN attention_json TEXT;
    CREATE TABLE cancel_refusals (
        t REAL NOT NULL,
        name TEXT NOT NULL,
        uid INTEGER NOT NULL,
        user TEXT NOT NULL,
        job_id TEXT,
        reason TEXT NOT NULL
    );
    CREATE TABLE notifications (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL,
        next_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending',
        last_error TEXT,
        done_at REAL,
        UNIQUE (job_id, channel)
    );
    CREATE INDEX notifications_due ON notifications(state, next_at);
    """,
    # 7: each request's endpoint (its line's ``url``; NULL: chat completions, as every line before it), and
    # an embedding's vectors as packed little-endian float32 (3 KB for 768 dimensions, where JSON text takes
    # ~14 KB) in their own table: 3 KB rows in ``requests`` (WITHOUT ROWID, clustered) spread the hot
    # queued rows over overflow pages and made each ``take_pending`` 10x slower. The trigger keeps every
    # deletion of requests (retry, re-ingest, pruning) true of their vectors without each knowing.
    7: """
    ALTER TABLE requests ADD COLUMN url TEXT;
    CREATE TABLE vectors (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TRIGGER requests_vectors AFTER DELETE ON requests BEGIN
        DELETE FROM vectors WHERE job_id = old.job_id AND seq = old.seq;
    END
    """,
}


def migrate(db: sqlite3.Connection) -> None:
    """Each step reads the version and moves it on in one BEGIN IMMEDIATE transaction, so two
    processes opening a fresh journal at once (the daemon and ``batchd status``) cannot both run it."""
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(f"journal schema {version} is newer than this batchd ({SCHEMA_VERSION})")
            if version == SCHEMA_VERSION:
                db.execute("COMMIT")
                return
            target = version + 1
            for statement in _statements(MIGRATIONS[target]):
                db.execute(statement)
            if target == 2:
                _backfill_final(db)
            db.execute(f"PRAGMA user_version={target}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _statements(script: str) -> list[str]:
    """A script's statements: split at each ``;`` that ends one (a trigger's body holds its own)."""
    out: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                out.append(pending)
            pending = ""
    return out


def _backfill_final(db: sqlite3.Connection) -> None:
    """Version 1 kept the final status in meta_json; move it to its column (inside the migration)."""
    for job_id, meta in db.execute("SELECT id, meta_json FROM jobs").fetchall():
        final = (load_json(meta) or {}).get("final")
        if final in FinalStatus._value2member_map_:
            db.execute("UPDATE jobs SET final=? WHERE id=?", (final, job_id))
