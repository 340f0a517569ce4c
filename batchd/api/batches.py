"""What the API does: uploads and batches as views of journal jobs and outbox files.

A batch is an ordinary job (``source="api"``) made from an uploaded file by
the claimer's own ingest, so validation, queueing, running and publishing are
exactly those of a dropped file. Output and error files are the published
outbox's ``results.jsonl`` / ``errors.jsonl``, read through the journal's
``outbox_name`` with no link followed; nothing a request sends becomes a path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from batchd.api.files import Content, open_outbox_file, outbox_size, stream
from batchd.api.models import (
    ENDPOINT,
    BatchCreate,
    BatchError,
    BatchErrors,
    BatchObject,
    BatchStatus,
    FileObject,
    RequestCounts,
    Usage,
    new_batch_id,
    new_file_id,
)
from batchd.api.retention import Retention
from batchd.api.store import ApiStore, BatchRecord, FileRecord
from batchd.api.uploads import Upload, accept
from batchd.config import Settings
from batchd.errors import StorageError
from batchd.fsutil import fsync_dir
from batchd.intake.claim import Claimer, new_job_id
from batchd.intake.inbox import pipeline_for, safe_stem
from batchd.journal import FINISHED, CancelAnswer, FinalStatus, Job, JobState, Journal, NewBatch, NewClaim, ReqState
from batchd.status.views import ViewState

log = structlog.get_logger("batchd.api")

#: validation errors listed in a batch object; the full list is the error file
MAX_LISTED_ERRORS = 1000
_OUTBOX_NAMES = {"output": "results.jsonl", "error": "errors.jsonl"}


class ApiError(Exception):
    """An answer other than 2xx, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


class BatchService:
    def __init__(self, *, settings: Settings, journal: Journal, on_queued: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.journal = journal
        #: called on the loop when an upload's job is queued (the daemon's wake-up)
        self.on_queued = on_queued
        #: ingests in flight by batch id: cancel waits for one, a stop for all
        self.pending: dict[str, asyncio.Future[JobState | None]] = {}
        self.closed = False
        self.store = ApiStore(journal)
        self.retention = Retention(settings=settings, journal=journal, store=self.store)
        self.claimer = Claimer(settings=settings, journal=journal)
        self.uploads = settings.state_dir / "spool" / "api"

    # -- files ------------------------------------------------------------------------

    def room_for(self, size: int) -> None:
        """Expire what is due, then refuse (507) an upload that would pass ``api.max_stored_bytes``."""
        self.retention.expire()
        cap = self.settings.api.max_stored_bytes
        used = self.retention.stored_bytes()
        if used + size > cap:
            raise ApiError(
                507,
                f"the API stores {used:,} bytes; {size:,} more would pass api.max_stored_bytes "
                f"({cap:,}): delete files or wait for api.retention_days",
                code="storage_limit_reached",
            )

    def upload_limit(self) -> int:
        return min(self.settings.api.max_upload_bytes, self.settings.limits.max_file_bytes)

    def add_upload(self, upload: Upload, *, file_id: str) -> FileObject:
        final = self.uploads / f"{file_id}.jsonl"
        accept(upload, final)
        rec = self.store.add_input(
            file_id=file_id,
            filename=upload.filename or "upload.jsonl",
            size=upload.size,
            sha256=upload.sha256,
            spool=str(final),
        )
        obj = self.file_object(rec)
        assert obj is not None
        return obj

    def file_record(self, file_id: str) -> FileRecord:
        rec = self.store.file(file_id)
        if rec is None or self.file_object(rec) is None:
            raise ApiError(404, f"No such File object: {file_id}", code="file_not_found", param="file_id")
        return rec

    def file_object(self, rec: FileRecord) -> FileObject | None:
        """None for an output file whose batch has not published it (or has nothing in it)."""
        if rec.role == "input":
            return FileObject(
                id=rec.id, bytes=rec.bytes, created_at=int(rec.created_at), filename=rec.filename, purpose="batch"
            )
        job = self._source_job_of(rec)
        size = outbox_size(self.settings.outbox, job, _OUTBOX_NAMES[rec.role]) if job else None
        if not size or job is None:
            return None
        return FileObject(
            id=rec.id,
            bytes=size,
            created_at=int(job.finished_at or rec.created_at),
            filename=rec.filename,
            purpose="batch_output",
        )

    def list_files(self, *, after: str | None, limit: int) -> tuple[list[FileObject], bool]:
        rows = self.store.files(after=after, limit=limit + 1)
        objs = [o for o in (self.file_object(r) for r in rows[:limit]) if o is not None]
        return objs, len(rows) > limit

    def content(self, rec: FileRecord) -> Content:
        if rec.role == "input":
            assert rec.spool is not None
            try:
                fd = os.open(rec.spool, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                raise ApiError(404, f"No such File object: {rec.id}", code="file_not_found", param="file_id") from exc
            return stream(fd)
        job = self._source_job_of(rec)
        out = open_outbox_file(self.settings.outbox, job, _OUTBOX_NAMES[rec.role]) if job else None
        if out is None:
            raise ApiError(404, f"No such File object: {rec.id}", code="file_not_found", param="file_id")
        return stream(out)

    def delete_file(self, rec: FileRecord) -> None:
        """An upload's spool copy goes; a batch keeps its own link. Output files stay in the outbox."""
        self.store.delete_file(rec.id)
        if rec.role == "input" and rec.spool:
            Path(rec.spool).unlink(missing_ok=True)

    def _source_job_of(self, rec: FileRecord) -> Job | None:
        batch = self.store.batch(rec.batch_id or "")
        job = self.journal.job(batch.job_id) if batch else None
        return self._source(job) if job else None

    # -- batches ------------------------------------------------------------------------

    def create_batch(self, req: BatchCreate) -> BatchObject:
        """Record the job (``ingesting``) and start its ingest; the answer says ``validating``."""
        rec = self.store.file(req.input_file_id)
        if rec is None or rec.role != "input" or not rec.spool:
            raise ApiError(
                404, f"No such File object: {req.input_file_id}", code="file_not_found", param="input_file_id"
            )
        priority = _priority(req.metadata)
        job_id, batch_id = new_job_id(), new_batch_id()
        job_spool = self.claimer.spool / f"{job_id}.jsonl"
        _link_or_copy(Path(rec.spool), job_spool)
        pipeline = pipeline_for(self.settings.inbox, None, self.settings.pipeline)
        self.journal.claim(
            NewClaim(
                job_id=job_id,
                name=rec.filename,
                inbox_path=os.fsencode(f"api/{rec.id}"),
                spool=str(job_spool),
                sha256=rec.sha256,
                size=rec.bytes,
                mtime_ns=-1,
                input_name=f"api:{rec.filename}",
                stem=safe_stem(rec.filename),
                kind="jsonl",
                source="api",
                pipeline=None,
                pipeline_json=pipeline.model_dump_json(),
                # OpenAI's semantics: each answer depends on its own request only, unless the batch opts in
                meta={
                    "batch_id": batch_id,
                    "endpoint": req.endpoint,
                    "mode": _mode(req.metadata),
                    # when its outputs go (api.retention_days unless the batch asked for sooner or later)
                    "expires_after": req.output_expires_after.seconds if req.output_expires_after else None,
                },
            ),
            batch=NewBatch(
                batch_id=batch_id,
                input_file_id=rec.id,
                output_file_id=new_file_id(),
                error_file_id=new_file_id(),
                metadata=req.metadata,
            ),
        )
        if priority is not None:
            self.journal.set_priority(job_id, priority)  # who goes first (``batchd.schedule``)
        log.info("api_batch_created", batch_id=batch_id, job_id=job_id, input=rec.filename, bytes=rec.bytes)
        self._start_ingest(batch_id, job_id)
        return self.batch_object(self.batch_record(batch_id))

    def _start_ingest(self, batch_id: str, job_id: str) -> None:
        """Ingest in a thread with its own journal connection, as the daemon's claim thread does.

        A 170,000-line upload takes seconds to parse: on the event loop it would stall
        the running job's lanes and the watchdog. A daemon thread, because ingest is
        restartable (an ``ingesting`` job is ingested again at start-up), so stopping
        the daemon need not wait for it.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[JobState | None] = loop.create_future()
        self.pending[batch_id] = done
        done.add_done_callback(lambda _: self.pending.pop(batch_id, None))

        def finish(state: JobState | None) -> None:
            if not self.closed:  # after a stop the journal connection is gone
                if state is JobState.QUEUED:
                    self.store.mark(batch_id, validated_at=time.time())
                if state is not None and self.on_queued is not None:
                    self.on_queued()
            if not done.done():
                done.set_result(state)

        def work() -> None:
            state: JobState | None = None
            try:
                journal = Journal(self.journal.path)
                try:
                    state = Claimer(settings=self.settings, journal=journal).ingest(job_id)
                finally:
                    journal.close()
            except StorageError as exc:
                # The daemon's claim thread also ingests every ``ingesting`` job it sees; when it
                # got there first our inserts collide with its rows and it finishes the job.
                log.warning("api_ingest_failed", batch_id=batch_id, job_id=job_id, error=exc.message)
            except Exception:  # noqa: BLE001 - a thread must not die silently; restart re-ingests
                log.exception("api_ingest_failed", batch_id=batch_id, job_id=job_id)
            try:
                loop.call_soon_threadsafe(finish, state)
            except RuntimeError:
                pass  # the loop is gone: the daemon stopped; start-up ingests the job again

        threading.Thread(target=work, name=f"api-ingest-{job_id}", daemon=True).start()

    def batch_record(self, batch_id: str) -> BatchRecord:
        rec = self.store.batch(batch_id)
        if rec is None or self.journal.job(rec.job_id) is None:
            raise ApiError(404, f"No such Batch object: {batch_id}", code="batch_not_found", param="batch_id")
        return rec

    def list_batches(self, *, after: str | None, limit: int) -> tuple[list[BatchObject], bool]:
        rows = self.store.batches(after=after, limit=limit + 1)
        objs = []
        for r in rows[:limit]:
            if self.journal.job(r.job_id) is not None:
                objs.append(self.batch_object(r))
        return objs, len(rows) > limit

    async def cancel(self, rec: BatchRecord) -> BatchObject:
        ingesting = self.pending.get(rec.id)
        if ingesting is not None:
            # Ingest looks for a cancel between batches of rows and ends the job cancelled
            # (``Journal.finish_ingest``): ask first, then wait the moment it takes.
            if self.journal.request_cancel(rec.job_id) is CancelAnswer.CANCELLING:
                self.store.mark(rec.id, cancelling_at=time.time())
            await asyncio.shield(ingesting)
        view = self.batch_object(rec)
        if view.status in ("cancelling", "cancelled"):
            return view
        if view.status in ("completed", "failed", "expired"):
            raise ApiError(409, f"Cannot cancel a batch with status {view.status!r}", code="batch_not_cancellable")
        job = self.journal.job(rec.job_id)
        assert job is not None
        if job.duplicate_of:
            # Its results are another job's: cancelling that one is not this caller's business.
            raise ApiError(
                409,
                "This batch shares the run of an identical earlier input; it cannot be cancelled",
                code="batch_not_cancellable",
            )
        self.journal.request_cancel(job.id)
        self.store.mark(rec.id, cancelling_at=time.time())
        return self.batch_object(self.batch_record(rec.id))

    def batch_object(self, rec: BatchRecord) -> BatchObject:
        job = self.journal.job(rec.job_id)
        assert job is not None
        src = self._source(job)
        status = _status(src)
        counts = self.journal.counts(src.id)
        finished = src.finished_at if src.state in FINISHED else None
        obj = BatchObject(
            id=rec.id,
            input_file_id=rec.input_file_id,
            endpoint=job.meta.get("endpoint") or ENDPOINT,
            status=status,
            created_at=int(rec.created_at),
            expires_at=int(rec.created_at + self.retention.lifetime(job)),
            metadata=rec.metadata,
            model=src.model,
            errors=self._errors(src),
            request_counts=RequestCounts(
                total=src.total,
                completed=counts.get(ReqState.DONE.value, 0),
                failed=counts.get(ReqState.FAILED.value, 0) + counts.get(ReqState.INVALID.value, 0),
            ),
            in_progress_at=_int(rec.validated_at or src.started_at) if status != "validating" else None,
            finalizing_at=_int(src.finished_at) if status not in ("validating", "in_progress") else None,
            completed_at=_int(finished) if status == "completed" else None,
            failed_at=_int(finished) if status == "failed" else None,
            cancelled_at=_int(finished) if status == "cancelled" else None,
            cancelling_at=_int(rec.cancelling_at) if status in ("cancelling", "cancelled") else None,
            usage=_usage(src),
        )
        if src.state in FINISHED:
            if outbox_size(self.settings.outbox, src, "results.jsonl"):
                obj.output_file_id = rec.output_file_id
            if outbox_size(self.settings.outbox, src, "errors.jsonl"):
                obj.error_file_id = rec.error_file_id
        return obj

    def _source(self, job: Job) -> Job:
        """The job whose run answers for this one: a duplicate upload shows its twin's."""
        if job.duplicate_of:
            twin = self.journal.job(job.duplicate_of)
            if twin is not None:
                return twin
        return job

    def _errors(self, job: Job) -> BatchErrors | None:
        data: list[BatchError] = []
        if job.error:
            data.append(BatchError(code=job.error.get("code"), message=job.error.get("message")))
        for req in self.journal.iter_requests(job.id, [ReqState.INVALID], chunk=500):
            if len(data) >= MAX_LISTED_ERRORS:
                break
            err = req.error or {}
            data.append(BatchError(code=err.get("code"), message=err.get("message"), line=req.line))
        return BatchErrors(data=data) if data else None


def _status(job: Job) -> BatchStatus:
    """The batch status OpenAI's clients know, from the job's state as ``batchd status`` shows it."""
    state = ViewState.of(job)
    if state is ViewState.INGESTING:
        return "validating"
    if state is ViewState.CANCELLING or (state is ViewState.QUEUED and job.cancel_requested):
        return "cancelling"  # queued with a cancel asked: a stop put it back before the runner saw the cancel
    if state in (ViewState.QUEUED, ViewState.RUNNING):
        return "in_progress"
    if state is ViewState.FINALIZING:
        return "cancelling" if job.final is FinalStatus.CANCELLED else "finalizing"
    if state is ViewState.FAILED:
        return "failed"
    if state is ViewState.CANCELLED:
        return "cancelled"
    return "completed"  # completed, or a duplicate whose twin is gone


def _usage(job: Job) -> Usage | None:
    state = (job.metrics or {}).get("state")
    if not isinstance(state, dict):
        return None
    prompt = int(state.get("prompt_tokens") or 0)
    completion = int(state.get("completion_tokens") or 0)
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=prompt + completion,
        input_tokens_details={"cached_tokens": int(state.get("cached_prompt_tokens") or 0)},
    )


def _int(ts: float | None) -> int | None:
    return int(ts) if ts else None


def _link_or_copy(src: Path, dst: Path) -> None:
    """The job gets its own name for the upload's bytes, so deleting the upload cannot touch it."""
    try:
        os.link(src, dst)
    except FileNotFoundError as exc:
        raise ApiError(404, "the input file's content is gone", code="file_not_found", param="input_file_id") from exc
    except OSError:
        shutil.copyfile(src, dst)
    fsync_dir(dst.parent)


def _priority(metadata: dict[str, str] | None) -> int | None:
    """``metadata.priority``: the batch's priority (an integer from -1000 to 1000; higher runs first)."""
    raw = (metadata or {}).get("priority")
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or not -1000 <= value <= 1000:
        raise ApiError(400, "metadata.priority must be an integer from -1000 to 1000", param="metadata")
    return value


def _mode(metadata: dict[str, str] | None) -> str:
    """An API batch runs isolated; ``metadata.mode = "conversation"`` opts in to the context loop."""
    return "conversation" if (metadata or {}).get("mode") == "conversation" else "isolated"
