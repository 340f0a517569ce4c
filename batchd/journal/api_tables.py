"""The HTTP API's records in the journal (``api_files``, ``api_batches``); ``api/store.py`` gives them types."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import orjson

from batchd.journal.connection import Connection
from batchd.journal.records import NewBatch


class ApiRecords(Connection):
    """The API's tables (``Journal`` mixes this in): uploads, batches, and what retention removes."""

    _API_FILE_COLS = "seq, id, role, filename, bytes, sha256, spool, batch_id, created_at"
    _API_BATCH_COLS = (
        "seq, id, job_id, input_file_id, output_file_id, error_file_id, metadata, created_at, "
        "validated_at, cancelling_at"
    )

    def api_add_input(self, *, file_id: str, filename: str, size: int, sha256: str, spool: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO api_files (id, role, filename, bytes, sha256, spool, created_at) "
                "VALUES (?, 'input', ?, ?, ?, ?, ?)",
                (file_id, filename, size, sha256, spool, time.time()),
            )

    def api_file(self, file_id: str) -> dict[str, Any] | None:
        """The upload's row by column name (``api.store.FileRecord`` takes the same names)."""
        rows = self._query_named(f"SELECT {self._API_FILE_COLS} FROM api_files WHERE id=?", (file_id,))
        return rows[0] if rows else None

    def api_files(self, *, after: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first; ``after`` is the last id of the previous page."""
        return self._query_named(
            f"SELECT {self._API_FILE_COLS} FROM api_files WHERE seq < COALESCE((SELECT seq FROM api_files "
            "WHERE id=?), 9223372036854775807) ORDER BY seq DESC LIMIT ?",
            (after, limit),
        )

    def api_delete_file(self, file_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM api_files WHERE id=?", (file_id,))

    def api_add_batch(self, db: sqlite3.Connection, job_id: str, batch: NewBatch) -> None:
        """Inside the caller's transaction (the one that creates the job: ``Journal.claim``)."""
        now = time.time()
        metadata = orjson.dumps(batch.metadata).decode() if batch.metadata is not None else None
        db.execute(
            "INSERT INTO api_batches (id, job_id, input_file_id, output_file_id, error_file_id, metadata, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (batch.batch_id, job_id, batch.input_file_id, batch.output_file_id, batch.error_file_id, metadata, now),
        )
        for file_id, role in ((batch.output_file_id, "output"), (batch.error_file_id, "error")):
            db.execute(
                "INSERT INTO api_files (id, role, filename, batch_id, created_at) VALUES (?, ?, ?, ?, ?)",
                (file_id, role, f"{batch.batch_id}_{role}.jsonl", batch.batch_id, now),
            )

    def api_batch(self, batch_id: str) -> dict[str, Any] | None:
        """The batch's row by column name (``metadata`` still JSON text)."""
        rows = self._query_named(f"SELECT {self._API_BATCH_COLS} FROM api_batches WHERE id=?", (batch_id,))
        return rows[0] if rows else None

    def api_batches(self, *, after: str | None, limit: int) -> list[dict[str, Any]]:
        return self._query_named(
            f"SELECT {self._API_BATCH_COLS} FROM api_batches WHERE seq < COALESCE((SELECT seq FROM api_batches "
            "WHERE id=?), 9223372036854775807) ORDER BY seq DESC LIMIT ?",
            (after, limit),
        )

    # retention (batchd.api.retention)

    def api_batches_before(self, cutoff: float) -> list[tuple[str, str]]:
        return [
            (str(a), str(b))
            for a, b in self._query("SELECT id, job_id FROM api_batches WHERE created_at < ?", (cutoff,))
        ]

    def api_inputs_before(self, cutoff: float) -> list[tuple[str, str | None]]:
        return [
            (str(a), b)
            for a, b in self._query("SELECT id, spool FROM api_files WHERE role='input' AND created_at < ?", (cutoff,))
        ]

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
