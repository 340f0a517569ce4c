"""How long the API keeps what clients gave it and what it made, and how much in all.

``expire()`` deletes uploads older than ``api.retention_days`` and, for
finished batches that old, their batch record, output file records, spool
copy and outbox folder (only a folder whose ``metrics.json`` names that job:
nothing an inbox user published is ever touched). Unfinished batches are
kept until they finish. ``stored_bytes()`` is what counts against
``api.max_stored_bytes``: the uploads plus the outbox folders of API batches.
Both run on the API's event-loop thread, like every other journal call there.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import structlog

from batchd.api.store import ApiStore
from batchd.config import Settings
from batchd.journal import FINISHED, Job, Journal

log = structlog.get_logger("batchd.api")

DAY = 86400.0


class Retention:
    def __init__(
        self, *, settings: Settings, journal: Journal, store: ApiStore, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.store = store
        self.clock = clock

    def lifetime(self, job: Job | None) -> float:
        """Seconds from a batch's creation to its expiry: its ``output_expires_after``, else ``api.retention_days``."""
        asked = job.meta.get("expires_after") if job is not None else None
        return float(asked) if isinstance(asked, (int, float)) else self.settings.api.retention_days * DAY

    def expire(self) -> int:
        """Delete what is past its lifetime (``lifetime``; uploads: ``api.retention_days``); returns how
        many records went. An expired batch's job is marked ``expired_at``: ``batchd status`` drops it."""
        now = self.clock()
        cutoff = now - self.settings.api.retention_days * DAY
        gone = 0
        # the shortest lifetime a batch may ask for is an hour: older batches are the candidates
        for batch_id, job_id in self.store.batches_before(now - 3600):
            job = self.journal.job(job_id)
            record = self.store.batch(batch_id)
            if record is None or record.created_at + self.lifetime(job) > now:
                continue
            if job is not None and job.state not in FINISHED:
                continue  # still running: its outputs are not even there yet
            if job is not None:
                self._remove_outputs(job)
                self.journal.update_job(job.id, meta={**job.meta, "expired_at": now})
            self.store.delete_batch(batch_id)
            gone += 1
        for file_id, spool in self.store.inputs_before(cutoff):
            if spool:
                Path(spool).unlink(missing_ok=True)
            self.store.delete_file(file_id)
            gone += 1
        if gone:
            log.info("api_expired", records=gone, retention_days=self.settings.api.retention_days)
        return gone

    def _remove_outputs(self, job: Job) -> None:
        if job.spool:
            Path(job.spool).unlink(missing_ok=True)
        if job.outbox_name:
            folder = self.settings.outbox / job.outbox_name
            if _published_by(folder, job.id):
                shutil.rmtree(folder, ignore_errors=True)  # rmtree never follows a symlink out

    def stored_bytes(self) -> int:
        total = self.store.input_bytes()
        for job_id in self.store.batch_job_ids():
            job = self.journal.job(job_id)
            if job is not None and job.outbox_name:
                total += _folder_bytes(self.settings.outbox / job.outbox_name)
        return total


def _published_by(folder: Path, job_id: str) -> bool:
    try:
        return (
            bool(orjson.loads((folder / "metrics.json").read_bytes()).get("job_id") == job_id)
            and not folder.is_symlink()
        )
    except (OSError, orjson.JSONDecodeError):
        return False


def _folder_bytes(folder: Path) -> int:
    try:
        return sum(p.lstat().st_size for p in folder.iterdir())
    except OSError:
        return 0
