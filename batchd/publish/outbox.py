"""Publishes a finished job: stream from the journal into ``.<stem>.partial/``, fsync, rename.

A reader never sees half a job. The chosen folder name is journaled before
the rename, so a crash after the rename is recognised on restart (its
``metrics.json`` names the job) and never published twice.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import os
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import structlog

from batchd.config import Settings
from batchd.errors import StorageError
from batchd.fsutil import fsync_dir
from batchd.journal import FinalStatus, Job, Journal, ReqState, Request
from batchd.metrics import JobMetrics
from batchd.metricsfile import Header, MetricsFile
from batchd.pipeline import Pipeline
from batchd.publish.report import ReportData, write_report
from batchd.publish.scores import ScoreSheet
from batchd.publish.share import SharedFolder
from batchd.publish.vectors import NpyRows, with_vectors
from batchd.run.translate import result_id

log = structlog.get_logger("batchd.outbox")


def _iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat() if ts else None


class Outbox:
    def __init__(self, *, settings: Settings, journal: Journal) -> None:
        self.settings = settings
        self.journal = journal
        self.root = settings.outbox
        self._share = SharedFolder.of(self.root, group=settings.group)

    def publish(self, job: Job) -> Path:
        final = (job.final or FinalStatus.COMPLETED).value
        if job.outbox_name:
            existing = self.root / job.outbox_name
            if published_by(existing, job.id):
                self._finish(job, final, existing)
                return existing
        # The name reserved at claim, unless something else took that folder meanwhile.
        if job.outbox_name and not os.path.lexists(self.root / job.outbox_name):
            name = job.outbox_name
        else:
            name = self._free_name(job)
            self.journal.update_job(job.id, outbox_name=name)
        partial = self.root / f".{name}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # Looked up per job: the share's group may have been fixed since the daemon started.
            self._share = SharedFolder.of(self.root, group=self.settings.group)
            self._share.mkdir(partial)
            self._write_all(job, final, partial)
            fsync_dir(partial)
            target = self.root / name
            os.rename(partial, target)
            fsync_dir(self.root)
            remove_previews(self.root, job.id)  # the first look has served: the real folder is here
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise StorageError.from_os(f"cannot publish {name} to {self.root}", exc, self.root) from exc
        self._finish(job, final, target)
        return target

    def _finish(self, job: Job, final: str, target: Path) -> None:
        self.journal.published(job.id, FinalStatus(final), job.finished_at or time.time())
        log.info("job_published", job_id=job.id, input=job.input_name, status=final, outbox=str(target))

    def write_files(self, job: Job, status: str, folder: Path, *, answered_only: bool = False) -> None:
        """The job's files into ``folder`` (made with ``new_folder``): the final publish's, or a preview's."""
        self._write_all(job, status, folder, answered_only=answered_only)

    def new_folder(self, path: Path) -> None:
        self._share.mkdir(path)

    def open_file(self, path: Path) -> Any:
        """A new file in the share's group and mode, fsynced on close (a context manager)."""
        return self._open(path)

    def free_name(self, job: Job) -> str:
        """The folder name the job would get now (``publish.preview`` names its ``.preview`` after it)."""
        return self._free_name(job)

    def _free_name(self, job: Job) -> str:
        taken = {p.name for p in self.root.iterdir()} if self.root.exists() else set()
        taken |= self.journal.reserved_outbox_names(except_job=job.id)
        name, n = job.stem, 1
        while name in taken:
            n += 1
            name = f"{job.stem}.{n}"
        return name

    # -- the files ------------------------------------------------------------------------

    def _write_all(self, job: Job, final: str, folder: Path, *, answered_only: bool = False) -> None:
        """Every file of the job's folder; ``answered_only`` (a preview): the rows answered so far, no input."""
        counts = {"total": 0, "completed": 0, "failed": 0}
        states = (ReqState.DONE, ReqState.FAILED, ReqState.INVALID) if answered_only else None
        pipeline = Pipeline.model_validate_json(job.pipeline_json) if job.pipeline_json else None
        sheet = ScoreSheet.for_job(pipeline, job.kind)
        report: ReportData | None = None
        if job.kind != "rejected" and final != "duplicate":
            report = ReportData(sheet)
            with (
                contextlib.ExitStack() as stack,
                self._open(folder / "results.jsonl") as res,
                self._open(folder / "errors.jsonl") as err,
                self._open(folder / "scores.csv") as sc,
            ):
                text = io.TextIOWrapper(sc, encoding="utf-8", newline="", write_through=True)
                writer = csv.writer(text)
                writer.writerow(sheet.header())
                vectors = self._npy(job, pipeline, folder, stack)
                for req in self.journal.iter_requests(job.id, states):
                    counts["total"] += 1
                    if req.state is ReqState.DONE:
                        counts["completed"] += 1
                        res.write(self._result_line(job, req))
                        if vectors is not None:
                            vectors.add(req.custom_id, req.vector)
                    elif req.state in (ReqState.FAILED, ReqState.INVALID):
                        counts["failed"] += 1
                        err.write(self._error_line(job, req))
                    scored = sheet.score(req)
                    writer.writerow(sheet.cells(scored))
                    report.add(scored)
                if job.error is not None:  # the job's own failure (a file that could not be read, model missing)
                    err.write(self._job_error_line(job))
                text.flush()
                text.detach()
        elif job.error is not None:
            with self._open(folder / "errors.jsonl") as err:
                err.write(self._job_error_line(job))
        if job.spool and Path(job.spool).exists() and not answered_only:
            ext = "csv" if job.kind == "csv" else "jsonl"
            with open(job.spool, "rb") as src, self._open(folder / f"input.{ext}") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        metrics = self._metrics(job, final, counts)
        with self._open(folder / "metrics.json") as fh:
            fh.write(orjson.dumps(metrics, option=orjson.OPT_INDENT_2) + b"\n")
        if report is not None and counts["total"]:
            try:
                write_report(folder, job, self.journal, sheet=sheet, data=report, metrics=metrics, opener=self._open)
            except OSError:
                raise
            except Exception as exc:  # noqa: BLE001 - the report is a view; a bug in it must not hold the results back
                log.error("report_failed", job_id=job.id, error=repr(exc))

    def _npy(self, job: Job, pipeline: Pipeline | None, folder: Path, stack: contextlib.ExitStack) -> NpyRows | None:
        """``embeddings.npy`` + ``embeddings_ids.csv`` for a CSV embed pipeline with vectors to write."""
        if job.kind != "csv" or pipeline is None or pipeline.task != "embed":
            return None
        rows = self.journal.counts(job.id).get(ReqState.DONE.value, 0)
        if not rows:
            return None
        npy = stack.enter_context(self._open(folder / "embeddings.npy"))
        ids = stack.enter_context(self._open(folder / "embeddings_ids.csv"))
        return NpyRows(npy, ids, rows)

    def _open(self, path: Path) -> Any:
        # Group and mode are set on the new file itself: regardless of umask or the input file's mode.
        return _SyncedFile(os.fdopen(self._share.create(path), "wb", buffering=1 << 20))

    def _job_error_line(self, job: Job) -> bytes:
        return (
            orjson.dumps(
                {
                    "id": result_id(job.sha256, job.input_name, "batch_req"),
                    "custom_id": None,
                    "response": None,
                    "error": job.error,
                    "input": job.input_name,
                }
            )
            + b"\n"
        )

    def _result_line(self, job: Job, req: Request) -> bytes:
        body = req.result if req.vector is None else with_vectors(req, as_base64=job.kind == "csv")
        return (
            orjson.dumps(
                {
                    "id": result_id(job.sha256, req.custom_id, "batch_req"),
                    "custom_id": req.custom_id,
                    "response": {
                        "status_code": 200,
                        "request_id": result_id(job.sha256, req.custom_id, "req"),
                        "body": body,
                    },
                    "error": None,
                }
            )
            + b"\n"
        )

    def _error_line(self, job: Job, req: Request) -> bytes:
        error = dict(req.error or {"code": "unknown", "message": "unknown error"})
        key = req.custom_id
        if req.state is ReqState.INVALID:
            # An invalid line may have no custom_id, or repeat one a valid line already has: its
            # line number tells it apart (still deterministic, run after run).
            key = f"{req.custom_id}\0line {req.line}"
        line: dict[str, Any] = {"id": result_id(job.sha256, key, "batch_req"), "custom_id": req.custom_id}
        status = error.pop("status_code", None)
        raw = error.pop("raw", None)
        if status is not None:
            line["response"] = {
                "status_code": status,
                "request_id": result_id(job.sha256, key, "req"),
                "body": {
                    "error": {
                        "message": error.get("message"),
                        "type": "invalid_request_error" if status < 500 else "server_error",
                        "code": error.get("code"),
                    }
                },
            }
            line["error"] = None
        else:
            line["response"] = None
            line["error"] = {"code": error.get("code"), "message": error.get("message")}
        if req.line is not None and req.state is ReqState.INVALID:
            line["line"] = req.line
        if raw is not None:
            line["raw_reply"] = raw
        return orjson.dumps(line) + b"\n"

    def _metrics(self, job: Job, final: str, counts: dict[str, int]) -> dict[str, Any]:
        state = job.metrics.get("state") if job.metrics else None
        m = JobMetrics.from_state(state) if state else JobMetrics()
        finished = job.finished_at or time.time()
        elapsed = m.busy_seconds or ((finished - job.started_at) if job.started_at else 0.0)
        header = Header(
            job_id=job.id,
            input=job.input_name,
            sha256=job.sha256,
            source=job.source,
            pipeline=job.pipeline or ("default" if job.kind == "csv" else None),
            model=m.served_model or job.model,
            requested_model=job.model,
            mode=job.mode,
            status=final,
            request_counts=counts,
            created_at=_iso(job.created_at),
            started_at=_iso(job.started_at),
            finished_at=_iso(finished),
            error=job.error,
            duplicate_of=job.duplicate_of,
            retry_of=job.retry_of,
        )
        summary = None
        if job.kind not in ("rejected",) and final != "duplicate":
            summary = m.sections(done=counts["completed"] + counts["failed"], elapsed=elapsed)
        return MetricsFile(header, summary).to_json()


class _SyncedFile:
    """A binary file that is flushed and fsynced on close."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh

    def __enter__(self) -> Any:
        return self.fh

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.fh.flush()
                os.fsync(self.fh.fileno())
        finally:
            self.fh.close()


def remove_previews(root: Path, job_id: str) -> None:
    """Remove the job's ``NAME.preview/`` folders (its ``metrics.json`` names the job)."""
    for folder in root.glob("*.preview"):
        if folder.is_dir() and not folder.is_symlink() and published_by(folder, job_id):
            shutil.rmtree(folder, ignore_errors=True)


def published_by(folder: Path, job_id: str) -> bool:
    try:
        return bool(orjson.loads((folder / "metrics.json").read_bytes()).get("job_id") == job_id)
    except (OSError, orjson.JSONDecodeError):
        return False
