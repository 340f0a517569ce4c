"""Operator commands: status, convert, render, cancel, retry, doctor.

They read (and for cancel/retry, write) the journal database directly, which
is safe while the daemon runs: SQLite WAL lets readers and one writer share it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from batchd.config import Settings
from batchd.errors import BatchdError, ConfigError, InputError
from batchd.ingest import Limits, batch_line, full_body, pipeline_prefix, read_csv
from batchd.journal import ACTIVE, FINISHED, Job, JobState, Journal
from batchd.pipeline import Pipeline, load_pipeline


def _journal(settings: Settings) -> Journal:
    return Journal(settings.state_dir / "journal.sqlite3")


def _pipeline(settings: Settings, name: str | None) -> Pipeline:
    if not name:
        return settings.pipeline
    folder = Path(name)
    if not (folder / "pipeline.toml").is_file():
        folder = settings.inbox / name
    return load_pipeline(folder)


def _limits(settings: Settings) -> Limits:
    return Limits(max_lines=settings.limits.max_lines, max_line_bytes=settings.limits.max_line_bytes)


# -- status ----------------------------------------------------------------------------


def job_view(journal: Journal, job: Job, now: float | None = None) -> dict[str, Any]:
    counts = journal.counts(job.id)
    done = counts.get("done", 0)
    failed = counts.get("failed", 0) + counts.get("invalid", 0)
    finished = done + failed + counts.get("skipped", 0)
    now = now or time.time()
    rate = None
    eta = None
    if job.state is JobState.RUNNING and job.started_at:
        state = job.metrics.get("state", {}) if job.metrics else {}
        elapsed = max(1e-6, now - job.started_at)
        rate = (done + counts.get("failed", 0)) / elapsed if not state else (done + counts.get("failed", 0)) / max(
            1e-6, state.get("busy_seconds") or elapsed)
        left = counts.get("queued", 0) + counts.get("running", 0)
        eta = left / rate if rate else None
    return {
        "job_id": job.id, "input": job.input_name, "state": job.state.value, "source": job.source,
        "total": job.total, "done": done, "failed": failed, "finished": finished,
        "progress": round(finished / job.total, 4) if job.total else (1.0 if job.state in FINISHED else 0.0),
        "req_per_s": round(rate, 3) if rate else None, "eta_seconds": round(eta) if eta else None,
        "outbox": job.outbox_name, "error": job.error, "created_at": job.created_at,
    }


def status(settings: Settings, *, as_json: bool, limit: int) -> int:
    journal = _journal(settings)
    active = list(reversed(journal.jobs([*ACTIVE, JobState.INGESTING])))
    recent = journal.jobs(list(FINISHED), limit=limit)
    views = {"active": [job_view(journal, j) for j in active], "recent": [job_view(journal, j) for j in recent]}
    if as_json:
        sys.stdout.write(orjson.dumps(views, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not views["active"]:
        print(f"idle, {len(views['recent'])} recent job(s)")
    for v in views["active"] + views["recent"]:
        bar = _bar(v["progress"])
        extra = []
        if v["req_per_s"]:
            extra.append(f"{v['req_per_s']:.1f} req/s")
        if v["eta_seconds"]:
            extra.append(f"ETA {_dur(v['eta_seconds'])}")
        if v["failed"]:
            extra.append(f"{v['failed']} failed")
        if v["error"]:
            extra.append(str(v["error"].get("message", ""))[:60])
        print(f"{v['job_id']}  {v['state']:<10} {bar} {v['finished']:>7,}/{v['total']:<7,} {v['input']}  "
              + ", ".join(extra))
    return 0


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction * 100:5.1f}%"


def _dur(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# -- convert / render ------------------------------------------------------------------


def _csv_pipeline(settings: Settings, path: Path, name: str | None) -> Pipeline:
    """The pipeline the daemon would use: --pipeline, else the CSV's own folder's, else the default."""
    if name is None and (path.parent / "pipeline.toml").is_file():
        return load_pipeline(path.parent)
    return _pipeline(settings, name)


def _input_error(path: Path, exc: InputError) -> BatchdError:
    if exc.code == "pipeline_mismatch":  # the pipeline does not fit the file: exit 2 like any config error
        return ConfigError(str(path), exc.message)
    return BatchdError(f"{path}: {exc.message}")


def convert(settings: Settings, path: Path, *, pipeline: str | None, output: Path | None) -> int:
    """Write the OpenAI batch JSONL the daemon would journal for ``path``, byte for byte.

    Rows the daemon would record as invalid are left out and listed on stderr.
    With ``-o`` the file appears complete or not at all (temp file + rename).
    """
    pipe = _csv_pipeline(settings, path, pipeline)
    prefix = pipeline_prefix(pipe, settings.model_for(pipe))
    tmp = output.with_name(f".{output.name}.tmp") if output is not None else None
    out = sys.stdout.buffer if tmp is None else tmp.open("wb")
    written = skipped = 0
    try:
        with path.open("rb") as fh:
            _, rows = read_csv(fh, pipe, _limits(settings))
            for r in rows:
                if r.body is None:
                    skipped += 1
                    err = r.error or {}
                    print(f"batchd: skipped row {r.seq} (line {r.line}): {err.get('message')}", file=sys.stderr)
                    continue
                out.write(batch_line(r.custom_id or "", full_body(prefix, r.body)))
                written += 1
        out.flush()
        if tmp is not None and output is not None:
            os.replace(tmp, output)
    except InputError as exc:
        raise _input_error(path, exc) from exc
    except OSError as exc:
        raise BatchdError(f"{output or path}: {exc}") from exc
    finally:
        if tmp is not None:
            out.close()
            tmp.unlink(missing_ok=True)
    print(f"batchd: {written} request(s) written, {skipped} row(s) skipped", file=sys.stderr)
    return 0


def render(settings: Settings, path: Path, *, pipeline: str | None, row: int) -> int:
    """Print the exact messages and options the daemon sends for data row ``row`` (1-based)."""
    pipe = _csv_pipeline(settings, path, pipeline)
    prefix = pipeline_prefix(pipe, settings.model_for(pipe))
    try:
        with path.open("rb") as fh:
            _, rows = read_csv(fh, pipe, _limits(settings))
            for r in rows:
                if r.seq != row:
                    continue
                if r.body is None:
                    raise BatchdError(f"row {row} (line {r.line}) is invalid: {(r.error or {}).get('message')}")
                body = full_body(prefix, r.body)
                print(f"=== row {row} (line {r.line}), custom_id {r.custom_id}, pipeline {pipe.name} ===")
                for m in body["messages"]:
                    print(f"--- {m['role']} ---\n{m['content']}")
                rest = {k: v for k, v in body.items() if k != "messages"}
                print("--- request options ---\n" + orjson.dumps(rest, option=orjson.OPT_INDENT_2).decode())
                return 0
    except InputError as exc:
        raise _input_error(path, exc) from exc
    except OSError as exc:
        raise BatchdError(f"{path}: {exc}") from exc
    raise ConfigError("--row", f"the file has no data row {row}")


# -- cancel / retry --------------------------------------------------------------------


def request_cancel(journal: Journal, job_id: str) -> str:
    """Cancel one job; returns ``cancelling`` (running: stops after the requests in flight),
    ``cancelled`` (had not run: finalizing now) or the state it already was in.

    Read and write in one transaction so a daemon starting the job meanwhile
    (another process) cannot be overtaken. Shared by ``batchd cancel`` and the HTTP API.
    """
    with journal.transaction() as db:
        job = journal.job(job_id)
        if job is None:
            return "missing"
        if job.state in FINISHED or job.state is JobState.FINALIZING:
            return job.state.value
        if job.state is JobState.RUNNING:
            journal.update_job(job.id, db=db, cancel_requested=1)
            return "cancelling"
        journal.skip_unfinished(job.id, db)
        journal.update_job(job.id, db=db, state=JobState.FINALIZING, cancel_requested=1,
                           meta={**job.meta, "final": "cancelled"})
        return "cancelled"


def cancel(settings: Settings, job_ref: str) -> int:
    journal = _journal(settings)
    job = journal.job(job_ref)
    if job is None:
        raise ConfigError("JOB", f"no job {job_ref!r}")
    outcome = request_cancel(journal, job.id)
    if outcome == "cancelling":
        print(f"{job.id}: cancelling after the requests in flight; its outbox will say cancelled")
        return 0
    if outcome == "cancelled":
        print(f"{job.id}: cancelled before it ran; its outbox will say cancelled")
        return 0
    print(f"{job.id} already {outcome}")
    return 1


def retry(settings: Settings, job_ref: str) -> int:
    """A new job over the same input that runs only the failed requests of ``job_ref``."""
    from batchd.claim import new_job_id

    journal = _journal(settings)
    job = journal.job(job_ref)
    if job is None:
        raise ConfigError("JOB", f"no job {job_ref!r}")
    if job.state not in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
        raise ConfigError("JOB", f"job {job.id} is {job.state.value}; only finished jobs can be retried")
    new_id = new_job_id()
    with journal.transaction() as db:
        journal.create_job(job_id=new_id, db=db, state=JobState.QUEUED, input_name=job.input_name, stem=job.stem,
                           kind=job.kind, file_id=job.file_id, source=job.source, sha256=job.sha256,
                           pipeline=job.pipeline, pipeline_json=job.pipeline_json, retry_of=job.id,
                           meta={"retry_of": job.id})
        n = db.execute(
            "INSERT INTO requests (job_id, seq, line, custom_id, body, row, state) "
            "SELECT ?, seq, line, custom_id, body, row, 'queued' FROM requests "
            "WHERE job_id=? AND state IN ('failed','skipped')", (new_id, job.id)).rowcount
        db.execute("UPDATE jobs SET total=?, prefix_json=?, model=?, mode=?, columns_json=? WHERE id=?",
                   (n, job.prefix_json, job.model, job.mode, orjson.dumps(job.columns), new_id))
    if n == 0:
        with journal.transaction() as db:
            db.execute("DELETE FROM jobs WHERE id=?", (new_id,))
        print(f"{job.id} has no failed requests to retry")
        return 1
    print(f"{new_id}: retrying {n} request(s) of {job.id}; results go to a new outbox folder")
    return 0


def doctor(settings: Settings) -> int:
    from batchd.doctor import run_checks

    return run_checks(settings)
