"""The API's own records (uploaded files, batch ids) in the journal database.

Two small tables of the journal (its migration 3); their SQL lives in
``Journal`` (``api_*`` methods), this module gives the rows their types, by column name.
A batch row is written in the same transaction as its job, so a crash never
leaves a batch without a job or the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from batchd.journal import Journal, NewBatch


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
        self.journal = journal  # the tables are the journal's (its migration 3)

    # -- files ------------------------------------------------------------------------

    def add_input(self, *, file_id: str, filename: str, size: int, sha256: str, spool: str) -> FileRecord:
        self.journal.api_add_input(file_id=file_id, filename=filename, size=size, sha256=sha256, spool=spool)
        rec = self.file(file_id)
        assert rec is not None
        return rec

    def file(self, file_id: str) -> FileRecord | None:
        row = self.journal.api_file(file_id)
        return FileRecord(**row) if row else None

    def files(self, *, after: str | None, limit: int) -> list[FileRecord]:
        """Newest first; ``after`` is the last id of the previous page."""
        return [FileRecord(**r) for r in self.journal.api_files(after=after, limit=limit)]

    def delete_file(self, file_id: str) -> None:
        self.journal.api_delete_file(file_id)

    # -- batches ------------------------------------------------------------------------

    def add_batch(
        self,
        db: Any,
        *,
        batch_id: str,
        job_id: str,
        input_file_id: str,
        output_file_id: str,
        error_file_id: str,
        metadata: dict[str, str] | None,
    ) -> None:
        """Inside the caller's transaction (the one that creates the job; a new batch comes with its job
        through ``Journal.claim``)."""
        self.journal.api_add_batch(
            db,
            job_id,
            NewBatch(
                batch_id=batch_id,
                input_file_id=input_file_id,
                output_file_id=output_file_id,
                error_file_id=error_file_id,
                metadata=metadata,
            ),
        )

    def batch(self, batch_id: str) -> BatchRecord | None:
        row = self.journal.api_batch(batch_id)
        return _batch(row) if row else None

    def batches(self, *, after: str | None, limit: int) -> list[BatchRecord]:
        return [_batch(r) for r in self.journal.api_batches(after=after, limit=limit)]

    # -- retention (batchd.api.retention) ------------------------------------------------

    def batches_before(self, cutoff: float) -> list[tuple[str, str]]:
        return self.journal.api_batches_before(cutoff)

    def inputs_before(self, cutoff: float) -> list[tuple[str, str | None]]:
        return self.journal.api_inputs_before(cutoff)

    def delete_batch(self, batch_id: str) -> None:
        """The batch and its output file records; its input upload expires on its own."""
        self.journal.api_delete_batch(batch_id)

    def input_bytes(self) -> int:
        return self.journal.api_input_bytes()

    def batch_job_ids(self) -> list[str]:
        return self.journal.api_batch_job_ids()

    def mark(self, batch_id: str, **stamps: float) -> None:
        """Set ``validated_at`` / ``cancelling_at`` once (the first time wins)."""
        for column, value in stamps.items():
            self.journal.api_mark(batch_id, column, value)


def _batch(row: dict[str, Any]) -> BatchRecord:
    metadata = row.pop("metadata")
    return BatchRecord(**row, metadata=orjson.loads(metadata) if metadata is not None else None)
