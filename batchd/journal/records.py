"""The journal's records: job/request states as str enums, and the frozen rows callers get back."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple


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
    #: the uid that owned the claimed inbox file (None: an API upload, or claimed before journal version 4)
    owner_uid: int | None = None
    #: set by ``batchd priority`` or an API batch's ``metadata.priority``; None: the pipeline's or the default
    priority: int | None = None
    #: a job paused by fail-fast (queued, skipped by the scheduler until retried): why, with sample errors
    attention: dict[str, Any] | None = None


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
    #: the line's endpoint (``/v1/embeddings`` ...); None: ``/v1/chat/completions``
    url: str | None = None
    #: an embedding's vectors, packed little-endian float32, one after the other
    vector: bytes | None = None


@dataclass(frozen=True)
class NewClaim:
    """A file that becomes a job (``Journal.claim``): its file row and its ``ingesting`` job."""

    job_id: str
    #: the file row: its display name, where it was (bytes: a name need not be UTF-8), its spooled copy
    name: str
    inbox_path: bytes
    spool: str
    sha256: str | None
    size: int
    mtime_ns: int
    #: the job row
    input_name: str
    stem: str
    kind: str
    pipeline: str | None
    pipeline_json: str
    source: str = "inbox"
    meta: dict[str, Any] | None = None
    #: the uid that owned the inbox file (None: an API upload)
    owner_uid: int | None = None


@dataclass(frozen=True)
class NewBatch:
    """An API batch, recorded in the same transaction as its job (``Journal.claim``)."""

    batch_id: str
    input_file_id: str
    output_file_id: str
    error_file_id: str
    metadata: dict[str, str] | None


@dataclass(frozen=True)
class NewRequest:
    seq: int
    line: int | None
    custom_id: str | None
    body: dict[str, Any] | None
    row: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    #: the line's endpoint; None: ``/v1/chat/completions``
    url: str | None = None


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
    #: an embedding's vectors as packed float32 (the result body holds the rest of the reply)
    vector: bytes | None = None


class Sample(NamedTuple):
    """One point of a running job's time series (``Journal.add_sample``, every few seconds)."""

    #: wall-clock time (``time.time()``)
    t: float
    #: requests done and failed so far
    done: int
    failed: int
    #: the largest prompt the server counted in the last interval, when known
    ctx_tokens: int | None
    #: GPU memory in use, a fraction of the card, when known
    vram_used: float | None
    #: context trims so far
    trims: int
    #: requests allowed in flight then
    lanes: int | None
