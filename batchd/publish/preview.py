"""A first look at a running job: ``outbox/NAME.preview/`` over the rows answered so far.

Written after the first ``[preview] rows`` answers, then every ``[preview] interval_minutes`` (0: only
the first) while answers keep coming, and once more when fail-fast pauses the job (``attention.json``
says why, with sample errors). ``NAME`` is the folder the job's final publish would take now; the files
are the final folder's (``results.jsonl``, ``errors.jsonl``, ``scores.csv``, ``report.html``,
``metrics.json`` with status ``running`` or ``needs_attention``), written by ``Outbox`` the same way
(group-readable, fsynced) into ``.NAME.preview.partial/`` and renamed into place. The final publish
removes it (``outbox.remove_previews``). Its ``scores.csv`` rows are the final rows of the requests
answered so far, in the same order: a prefix-consistent subset of the final sheet.

Called from the live views' worker thread with its journal connection (``status.live``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import structlog

from batchd.config import Settings
from batchd.fsutil import fsync_dir
from batchd.journal import Job, JobState, Journal

log = structlog.get_logger("batchd.outbox")

SUFFIX = ".preview"


def find_previews(root: Path) -> dict[str, str]:
    """Job id -> its ``NAME.preview`` folder in the outbox (``batchd status`` shows them)."""
    found = {}
    for folder in root.glob("*" + SUFFIX):
        try:
            job_id = orjson.loads((folder / "metrics.json").read_bytes()).get("job_id")
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(job_id, str) and not folder.is_symlink():
            found[job_id] = folder.name
    return found


class Previews:
    """When each running job's preview is due, and writing it. One instance, in one thread."""

    def __init__(self, settings: Callable[[], Settings], wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.wall = wall
        #: job id -> (wall time of its last preview, requests answered then, paused then)
        self._last: dict[str, tuple[float, int, bool]] = {}
        #: job id -> the preview folder's name (the status page links it)
        self.folders: dict[str, str] = {}

    def due(self, job_id: str, answered: int, paused: bool) -> bool:
        rows = self.settings().preview.rows
        if rows <= 0 or answered < rows:
            return paused and job_id not in self._last and answered > 0
        last = self._last.get(job_id)
        if last is None or (paused and not last[2]):
            return True
        interval = self.settings().preview.interval_minutes * 60
        return bool(interval) and self.wall() - last[0] >= interval and answered > last[1]

    def consider(self, journal: Journal, job_id: str, answered: int, paused: bool) -> Path | None:
        """Write the job's preview when it is due; its folder, else None."""
        if not self.due(job_id, answered, paused):
            return None
        job = journal.job(job_id)
        if job is None:
            return None
        target = self.write(journal, job)
        self._last[job_id] = (self.wall(), answered, paused)
        return target

    def write(self, journal: Journal, job: Job) -> Path:
        # imported here: ``batchd status`` reads ``find_previews`` and must not pay for the writers
        from batchd.publish.outbox import Outbox, published_by

        outbox = Outbox(settings=self.settings(), journal=journal)
        root = outbox.root
        root.mkdir(parents=True, exist_ok=True)
        name = self.folders.get(job.id)
        if name is None or not published_by(root / name, job.id):
            name = outbox.free_name(job) + SUFFIX
        status = "needs_attention" if job.attention else "running"
        partial = root / f".{name}.partial"
        old = root / f".{name}.old"
        for leftover in (partial, old):
            shutil.rmtree(leftover, ignore_errors=True)
        outbox.new_folder(partial)
        try:
            outbox.write_files(job, status, partial, answered_only=True)
            if job.attention:
                with outbox.open_file(partial / "attention.json") as fh:
                    fh.write(orjson.dumps(job.attention, option=orjson.OPT_INDENT_2) + b"\n")
            fsync_dir(partial)
            target = root / name
            if target.exists():
                os.rename(target, old)  # a reader sees the old preview or the new one, never half of one
            os.rename(partial, target)
            fsync_dir(root)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        now = journal.job(job.id)
        if now is None or now.state not in (JobState.QUEUED, JobState.RUNNING):
            # finished while we wrote: the final publish may already have removed previews; this one goes too
            shutil.rmtree(target, ignore_errors=True)
            return target
        self.folders[job.id] = name
        log.info("job_preview", job_id=job.id, input=job.input_name, status=status, outbox=str(target))
        return target

    def forget(self, keep: set[str]) -> None:
        """Jobs no longer running or paused: their previews are the final publish's to remove."""
        for job_id in set(self._last) - keep:
            self._last.pop(job_id, None)
            self.folders.pop(job_id, None)
