"""Operator commands: status, convert, render, cancel, retry, resume, priority, doctor.

They read (and for cancel/retry, write) the journal database directly, which
is safe while the daemon runs: SQLite WAL lets readers and one writer share it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import orjson

from batchd import pace
from batchd.config import Settings
from batchd.errors import BatchdError, ConfigError, InputError
from batchd.intake.ingest import Limits, batch_line, full_body, pipeline_prefix, read_csv
from batchd.journal import CancelAnswer, Job, JobState, Journal
from batchd.pipeline import Pipeline, load_pipeline
from batchd.publish.preview import find_previews
from batchd.status.page import storage_waits
from batchd.status.views import JobView, StatusViews, status_views


def _journal(settings: Settings) -> Journal:
    path = settings.journal_path
    if not path.exists():
        # Creating it here (as whoever runs the command, often root) would leave a journal
        # the daemon's user cannot write.
        raise BatchdError(f"no journal at {path}: has the daemon run yet? (state_dir / BATCHD_STATE_DIR)")
    return Journal(path)


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

_COLUMNS = ("JOB", "STATE", "PROGRESS", "DONE/TOTAL", "REQ/S", "LANES", "ETA", "FAILED", "INPUT")


def status_table(views: StatusViews) -> str:
    """The human form of ``batchd status``: one row per job, running and queued first."""
    rows = [_COLUMNS]
    for v in views.active + views.recent:
        rows.append(
            (
                v.job_id,
                "needs_attention" if v.attention else v.state.value,
                _bar(v.progress),
                f"{v.finished:,}/{v.total:,}",
                pace.rate_text(v.req_per_s),
                (f"{v.lanes}" + (" auto" if v.lanes_mode == "auto" else "")) if v.lanes else "-",
                pace.duration(v.eta_seconds) if v.eta_seconds is not None else "-",
                f"{v.failed:,}" if v.failed else "-",
                v.input + _note(v),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
    right = {3, 4, 5, 6, 7}  # numbers line up on the right
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    running = views.running
    head = (f"running {running[0].input}" if running else "idle") + f", {views.waiting} queued"
    if len(rows) == 1:
        return head + ", no jobs yet"
    return head + "\n\n" + "\n".join(lines)


def status(settings: Settings, *, as_json: bool, limit: int) -> int:
    views = StatusViews()
    if settings.journal_path.exists():  # no journal yet: nothing has run
        journal = _journal(settings)
        try:
            views = status_views(journal, limit=limit, schedule=settings.schedule)
            shown = find_previews(settings.outbox)
            views = replace(views, active=tuple(replace(v, preview=shown.get(v.job_id)) for v in views.active))
        finally:
            journal.close()
    waits = storage_waits(settings.outbox, now=time.time())  # the daemon's own word, from its status page
    if as_json:
        doc = views.as_dict() | ({"waiting_for_storage": waits} if waits else {})
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print("\n".join([*(f"batchd: {w}" for w in waits), status_table(views)]))
    return 0


def _note(v: JobView) -> str:
    """After the input's name: the error, why a paused job waits for someone, or why it waits its turn."""
    if v.error:
        return f"  ({str(v.error.get('message', ''))[:60]})"
    if v.attention:
        return f"  (needs attention: {str(v.attention.get('message', ''))[:80]})"
    if v.preview:
        return f"  (first look: {v.preview}/)"
    if v.waits and v.waits != "next":
        return f"  (waits: {v.waits}" + (f", behind {v.behind})" if v.behind else ")")
    return ""


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(fraction * width)  # floor: a bar is full only when the job is
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction * 100:5.1f}%"


# -- convert / render ------------------------------------------------------------------


def _csv_pipeline(settings: Settings, path: Path, name: str | None, command: str) -> Pipeline:
    """The pipeline the daemon would use: --pipeline, else the CSV's own folder's, else the default."""
    if not path.name.lower().endswith(".csv"):
        # The daemon reads only *.csv through a pipeline; anything else would be garbage rows here.
        why = (
            "a .jsonl file is already OpenAI batch input: drop it into the inbox as it is"
            if path.name.lower().endswith(".jsonl")
            else "this is not one"
        )
        raise ConfigError(str(path), f"{command} reads a CSV file (a .csv name); {why}")
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
    pipe = _csv_pipeline(settings, path, pipeline, "convert")
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
    pipe = _csv_pipeline(settings, path, pipeline, "render")
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


def find_job(journal: Journal, job_ref: str) -> Job:
    """The job a full id or a unique prefix names; ConfigError (exit 2) when none or several do."""
    job = journal.job(job_ref)
    if job is not None:
        return job
    found = journal.jobs_starting_with(job_ref)
    if len(found) == 1:
        return found[0]
    matches = sorted(j.id for j in found)
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise ConfigError("JOB", f"{job_ref!r} is ambiguous: it starts {shown}; give more of the id")
    raise ConfigError("JOB", f"no job {job_ref!r} (batchd status lists the jobs)")


def cancel(settings: Settings, job_ref: str) -> int:
    journal = _journal(settings)
    job = find_job(journal, job_ref)
    outcome = journal.request_cancel(job.id)
    if outcome is CancelAnswer.CANCELLING:
        print(f"{job.id}: cancelling now (requests in flight are abandoned); its outbox will say cancelled")
        return 0
    if outcome is CancelAnswer.CANCELLED:
        print(f"{job.id}: cancelled before it ran; its outbox will say cancelled")
        return 0
    print(f"{job.id} is already {outcome.value.removeprefix('already_')}")
    return 1


def retry(settings: Settings, job_ref: str) -> int:
    """A new job over the same input that runs only the failed requests of ``job_ref``."""
    from batchd.intake.claim import new_job_id

    journal = _journal(settings)
    job = find_job(journal, job_ref)
    if job.attention is not None:
        return resume(settings, job_ref)
    if job.state not in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
        raise ConfigError("JOB", f"job {job.id} is {job.state.value}; only finished jobs can be retried")
    new_id = new_job_id()
    n = journal.add_retry(job, new_id)
    if n == 0:
        print(f"{job.id} has no failed requests to retry")
        return 1
    print(f"{new_id}: retrying {n} request(s) of {job.id}; results go to a new outbox folder")
    return 0


def resume(settings: Settings, job_ref: str) -> int:
    """A job paused for attention (fail-fast) runs on from where it stopped."""
    journal = _journal(settings)
    job = find_job(journal, job_ref)
    if not journal.resume_attention(job.id):
        print(f"{job.id} is {job.state.value}, not paused; nothing to resume")
        return 1
    print(f"{job.id}: resumed; it runs on from where it stopped (fail-fast watches the next window again)")
    return 0


def priority(settings: Settings, job_ref: str, value: int) -> int:
    """``batchd priority JOB N``: higher runs first; a running job yields to a higher one at request boundaries."""
    if not -1000 <= value <= 1000:
        raise ConfigError("N", f"a priority is an integer from -1000 to 1000 (got {value})")
    journal = _journal(settings)
    job = find_job(journal, job_ref)
    if job.state not in (JobState.QUEUED, JobState.RUNNING, JobState.INGESTING):
        print(f"{job.id} is {job.state.value}; a priority matters only before it finishes")
        return 1
    journal.set_priority(job.id, value)
    print(f"{job.id}: priority {value}")
    return 0


def doctor(settings: Settings, *, source: str = "") -> int:
    from batchd.ops.doctor import run_checks

    if source:
        print(f"configuration: {source}")
    return run_checks(settings)
