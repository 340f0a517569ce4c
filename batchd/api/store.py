"""The API's own records (uploaded files, batch ids) in the journal database.

Two small tables beside the journal's, created with ``IF NOT EXISTS`` so the
journal's schema version is untouched. Every statement runs through
``Journal.transaction()``: the same connection, the same locking, and sqlite3
errors translated to ``StorageError`` in the journal as everywhere else.
A batch row is written in the same transaction as its job, so a crash never
leaves a batch without a job or the other way round.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from batchd.journal import Journal

_DDL = (
    """CREATE TABLE IF NOT EXISTS api_files (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,            -- input | output | error
        filename TEXT NOT NULL,
        bytes INTEGER NOT NULL DEFAULT 0,
        sha256 TEXT,
        spool TEXT,                    -- inputs only; outputs live in the outbox
        batch_id TEXT,                 -- outputs only
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS api_batches (
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
    )""",
)

_FILE_COLS = "seq, id, role, filename, bytes, sha256, spool, batch_id, created_at"
_BATCH_COLS = ("seq, id, job_id, input_file_id, output_file_id, error_file_id, metadata, created_at, "
               "validated_at, cancelling_at")


@dataclass(frozen=True)
class FileRecord:
    seq: int
    id: str
    role: str
    filename: str
    bytes: int
    sha256: str | None
    spool: str | None
    batch_id: str | None
    created_at: float


@dataclass(frozen=True)
class BatchRecord:
    seq: int
    id: str
    job_id: str
    input_file_id: str
    output_file_id: str
    error_file_id: str
    metadata: dict[str, str] | None
    created_at: float
    validated_at: float | None
    cancelling_at: float | None


class ApiStore:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        with journal.transaction() as db:
            for ddl in _DDL:
                db.execute(ddl)

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        # BEGIN IMMEDIATE for a read costs a lock round-trip, but keeps every
        # statement inside the journal's one error-translating entry point.
        with self.journal.transaction() as db:
            return list(db.execute(sql, args).fetchall())

    # -- files ------------------------------------------------------------------------

    def add_input(self, *, file_id: str, filename: str, size: int, sha256: str, spool: str) -> FileRecord:
        now = time.time()
        with self.journal.transaction() as db:
            db.execute("INSERT INTO api_files (id, role, filename, bytes, sha256, spool, created_at) "
                       "VALUES (?, 'input', ?, ?, ?, ?, ?)", (file_id, filename, size, sha256, spool, now))
        rec = self.file(file_id)
        assert rec is not None
        return rec

    def file(self, file_id: str) -> FileRecord | None:
        rows = self._rows(f"SELECT {_FILE_COLS} FROM api_files WHERE id=?", (file_id,))
        return FileRecord(*rows[0]) if rows else None

    def files(self, *, after: str | None, limit: int) -> list[FileRecord]:
        """Newest first; ``after`` is the last id of the previous page."""
        rows = self._rows(
            f"SELECT {_FILE_COLS} FROM api_files WHERE seq < COALESCE((SELECT seq FROM api_files WHERE id=?), "
            "9223372036854775807) ORDER BY seq DESC LIMIT ?", (after, limit))
        return [FileRecord(*r) for r in rows]

    def delete_file(self, file_id: str) -> None:
        with self.journal.transaction() as db:
            db.execute("DELETE FROM api_files WHERE id=?", (file_id,))

    # -- batches ------------------------------------------------------------------------

    def add_batch(self, db: Any, *, batch_id: str, job_id: str, input_file_id: str, output_file_id: str,
                  error_file_id: str, metadata: dict[str, str] | None) -> None:
        """Inside the caller's transaction (the one that creates the job)."""
        now = time.time()
        db.execute(
            f"INSERT INTO api_batches ({_BATCH_COLS.replace('seq, ', '')}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
            (batch_id, job_id, input_file_id, output_file_id, error_file_id,
             orjson.dumps(metadata).decode() if metadata is not None else None, now))
        for file_id, role in ((output_file_id, "output"), (error_file_id, "error")):
            db.execute("INSERT INTO api_files (id, role, filename, batch_id, created_at) VALUES (?, ?, ?, ?, ?)",
                       (file_id, role, f"{batch_id}_{role}.jsonl", batch_id, now))

    def batch(self, batch_id: str) -> BatchRecord | None:
        rows = self._rows(f"SELECT {_BATCH_COLS} FROM api_batches WHERE id=?", (batch_id,))
        return _batch(rows[0]) if rows else None

    def batches(self, *, after: str | None, limit: int) -> list[BatchRecord]:
        rows = self._rows(
            f"SELECT {_BATCH_COLS} FROM api_batches WHERE seq < COALESCE((SELECT seq FROM api_batches WHERE id=?), "
            "9223372036854775807) ORDER BY seq DESC LIMIT ?", (after, limit))
        return [_batch(r) for r in rows]

    # -- retention (batchd.api.retention) ------------------------------------------------

    def batches_before(self, cutoff: float) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self._rows("SELECT id, job_id FROM api_batches WHERE created_at < ?",
                                                 (cutoff,))]

    def inputs_before(self, cutoff: float) -> list[tuple[str, str | None]]:
        return [(r[0], r[1]) for r in self._rows(
            "SELECT id, spool FROM api_files WHERE role='input' AND created_at < ?", (cutoff,))]

    def delete_batch(self, batch_id: str) -> None:
        """The batch and its output file records; its input upload expires on its own."""
        with self.journal.transaction() as db:
            db.execute("DELETE FROM api_files WHERE batch_id=?", (batch_id,))
            db.execute("DELETE FROM api_batches WHERE id=?", (batch_id,))

    def input_bytes(self) -> int:
        rows = self._rows("SELECT COALESCE(SUM(bytes), 0) FROM api_files WHERE role='input'")
        return int(rows[0][0])

    def batch_job_ids(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT job_id FROM api_batches")]

    def mark(self, batch_id: str, **stamps: float) -> None:
        """Set ``validated_at`` / ``cancelling_at`` once (the first time wins)."""
        with self.journal.transaction() as db:
            for column, value in stamps.items():
                if column not in ("validated_at", "cancelling_at"):
                    raise ValueError(column)
                db.execute(f"UPDATE api_batches SET {column}=COALESCE({column}, ?) WHERE id=?", (value, batch_id))


def _batch(r: Sequence[Any]) -> BatchRecord:
    meta = orjson.loads(r[6]) if r[6] is not None else None
    return BatchRecord(seq=r[0], id=r[1], job_id=r[2], input_file_id=r[3], output_file_id=r[4],
                       error_file_id=r[5], metadata=meta, created_at=r[7], validated_at=r[8], cancelling_at=r[9])
