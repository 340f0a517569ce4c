"""The SQLite journal: the single source of truth for files, jobs and requests (this package, and no
other module, speaks SQL or imports sqlite3).

One class owns the connection. WAL, ``busy_timeout`` and ``synchronous=FULL``
are set on connect; every read-then-write runs in ``transaction()``
(``BEGIN IMMEDIATE``). Rows are written in batches, never one commit per row.
sqlite3 errors are translated here and nowhere else.

- ``records``: the states (str enums) and the frozen records callers get back
- ``schema``: the DDL per version and the migrations keyed on ``user_version``
- ``rows``: records to and from rows (column lists, JSON blobs)
- ``connection``: the connection, its pragmas, ``transaction()``, the error translation
- ``lifecycle``: the job's state transitions, each one guarded transaction
- ``api_tables``: the HTTP API's uploads and batches
- ``team``: the queue as the scheduler sees it, priorities, paused jobs, refused ``.cancel`` files
- ``store``: ``Journal`` itself: the claim, job reads, request traffic, samples; the two above mixed in
"""

from __future__ import annotations

from batchd.journal.records import (
    ACTIVE,
    FINISHED,
    CancelAnswer,
    FinalStatus,
    Job,
    JobState,
    NewBatch,
    NewClaim,
    NewRequest,
    Outcome,
    ReqState,
    Request,
    RunOutcome,
    Sample,
)
from batchd.journal.schema import SCHEMA_VERSION
from batchd.journal.store import Journal

__all__ = [
    "ACTIVE",
    "FINISHED",
    "SCHEMA_VERSION",
    "CancelAnswer",
    "FinalStatus",
    "Job",
    "JobState",
    "Journal",
    "NewBatch",
    "NewClaim",
    "NewRequest",
    "Sample",
    "Outcome",
    "ReqState",
    "Request",
    "RunOutcome",
]
