"""A word when a job ends (``[notify]``): a signed webhook and/or a command, per final state.

When a job is published (``job_final``) one notification per configured channel is journaled
(``notifications``: one per job and channel, so a restart never owes it twice). A task on the daemon's
loop (``run``) delivers what is due, off the job's path:

- ``webhook``: POST an event shaped like OpenAI's Batch webhooks (``{"object": "event", "id": "evt_…",
  "type": "batch.completed" | "batch.failed" | "batch.cancelled", "created_at": …, "data": {"id": …}}``,
  batchd's facts beside ``id`` in ``data``), signed per Standard Webhooks: ``webhook-id`` (the event id,
  the same on every retry), ``webhook-timestamp`` (this attempt's), ``webhook-signature: v1,<base64
  HMAC-SHA256 of "id.timestamp.body">`` keyed by the base64 after ``whsec_`` in ``webhook_secret_file``.
  Anything but a 2xx is retried with backoff (doubling, up to ``BACKOFF_MAX``) across restarts until
  ``max_age_hours``, then given up (``notify_failed``).
- ``command``: run once with the job's facts in ``BATCHD_*`` variables, no shell, killed after
  ``command_timeout_seconds``; its exit status is logged (``notify_command``).

A job paused by fail-fast gets a ``batch.needs_attention`` event (batchd's own type; ``data.attention``:
why, with three sample errors) on both channels, once per pause.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import shlex
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from batchd.aio import wait_first
from batchd.backends.webhook import post
from batchd.config import Settings
from batchd.journal import FinalStatus, Job, Journal

log = structlog.get_logger("batchd.notify")

#: batchd's own type (OpenAI has none): a job paused by fail-fast (``run.failfast``), ``data.attention`` says why
ATTENTION = "batch.needs_attention"
TYPES = {
    FinalStatus.COMPLETED: "batch.completed",
    FinalStatus.DUPLICATE: "batch.completed",  # the work was done (by the twin): data.status says duplicate
    FinalStatus.FAILED: "batch.failed",
    FinalStatus.CANCELLED: "batch.cancelled",
}
#: the first retry after this many seconds, doubling up to BACKOFF_MAX
BACKOFF_SECONDS = 5.0
BACKOFF_MAX = 600.0
TICK = 1.0


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature header value (``v1,<base64>``) for one attempt."""
    key = base64.b64decode(secret.strip().removeprefix("whsec_"))
    mac = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class Notifier:
    def __init__(self, *, journal: Journal, settings: Callable[[], Settings], wall: Callable[[], float] = time.time):
        self.journal = journal
        self.settings = settings
        self.wall = wall
        self.backoff = BACKOFF_SECONDS
        self._poked = asyncio.Event()

    def job_final(self, job_id: str) -> None:
        """The job's outbox folder is in place: owe its notifications (a no-op without ``[notify]``)."""
        job = self.journal.job(job_id) if self._channels() else None
        if job is not None and job.final is not None:
            self._owe(job, TYPES[job.final], job.final.value, "")

    def jobs_paused(self) -> None:
        """Owe a ``batch.needs_attention`` notification (batchd's own type) for each fail-fast pause, once."""
        if self._channels():
            for job in self.journal.paused_jobs():
                why = job.attention or {}
                self._owe(job, ATTENTION, "needs_attention", f".attention.{why.get('at', 0)!r}", why)

    def _channels(self) -> list[str]:
        notify = self.settings().notify
        return [c for c, on in (("webhook", notify.webhook_url), ("command", notify.command)) if on]

    def _owe(self, job: Job, kind: str, status: str, tag: str, attention: dict[str, Any] | None = None) -> None:
        counts = self.journal.counts(job.id)
        now = self.wall()
        outbox = str(self.settings().outbox / job.outbox_name) if job.outbox_name else None
        data: dict[str, Any] = {
            "id": job.meta.get("batch_id") or job.id,
            "job_id": job.id,
            "input": job.input_name,
            "status": status,
            "request_counts": {
                "total": job.total,
                "completed": counts.get("done", 0),
                "failed": counts.get("failed", 0) + counts.get("invalid", 0),
            },
            "outbox": outbox,
        }
        if attention is not None:
            data["attention"] = attention
        event = {"object": "event", "id": f"evt_{uuid.uuid4().hex}", "type": kind, "created_at": int(now), "data": data}
        owed = False
        for channel in self._channels():
            event_id = event["id"] if channel == "webhook" else f"cmd_{uuid.uuid4().hex}"
            owed |= self.journal.add_notification(
                event_id=str(event_id), job_id=job.id, channel=channel + tag, body=orjson.dumps(event), at=now
            )
        if owed:
            self._poked.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver what is due until stop (a task on the daemon's loop; a dead receiver costs it only time)."""
        while not stop.is_set():
            try:
                self.jobs_paused()
                await self.deliver_due()
            except Exception:  # noqa: BLE001 - a notification bug must never stop the daemon
                log.exception("notify_failed_unexpectedly")
            self._poked.clear()
            await wait_first(self._poked.wait(), stop.wait(), timeout=TICK)

    async def deliver_due(self) -> int:
        due = self.journal.due_notifications(self.wall())
        if due:
            await asyncio.gather(*(self._deliver(row) for row in due))
        return len(due)

    async def _deliver(self, row: dict[str, Any]) -> None:
        if row["channel"].startswith("command"):
            await self._run_command(row)
        else:
            await self._post(row)

    async def _post(self, row: dict[str, Any]) -> None:
        notify = self.settings().notify
        body: bytes = row["body"]
        now = self.wall()
        headers = {"content-type": "application/json", "webhook-id": row["id"], "webhook-timestamp": str(int(now))}
        status: int | None = None
        try:
            if notify.webhook_url is None:
                raise OSError("[notify] webhook_url is no longer set")
            if notify.webhook_secret_file is not None:
                secret = Path(notify.webhook_secret_file).read_text(encoding="utf-8")
                headers["webhook-signature"] = sign(secret, row["id"], int(now), body)
            status, reason = await post(notify.webhook_url, body, headers, notify.timeout_seconds)
        except (OSError, ValueError) as exc:  # the secret file unreadable or not base64
            reason = f"{type(exc).__name__}: {exc}"
        if status is not None and 200 <= status < 300:
            self.journal.notification_tried(row["id"], state="delivered", next_at=now, error=None, at=now)
            log.info("notify_delivered", job_id=row["job_id"], event_id=row["id"], attempts=row["attempts"] + 1)
            return
        error = f"HTTP {status} {reason}" if status is not None else reason
        if now - row["created_at"] >= notify.max_age_hours * 3600:
            self.journal.notification_tried(row["id"], state="failed", next_at=now, error=error, at=now)
            log.error("notify_failed", job_id=row["job_id"], event_id=row["id"], error=error)
            return
        wait = min(BACKOFF_MAX, self.backoff * 2 ** row["attempts"])
        self.journal.notification_tried(row["id"], state="pending", next_at=now + wait, error=error)
        log.warning("notify_retrying", job_id=row["job_id"], event_id=row["id"], error=error, retry_in=wait)

    async def _run_command(self, row: dict[str, Any]) -> None:
        notify = self.settings().notify
        event = orjson.loads(row["body"])
        data = event["data"]
        argv = shlex.split(notify.command) if isinstance(notify.command, str) else list(notify.command or [])
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
        env.update(
            {
                "BATCHD_EVENT": event["type"],
                "BATCHD_JOB_ID": data["job_id"],
                "BATCHD_BATCH_ID": data["id"],
                "BATCHD_STATUS": data["status"],
                "BATCHD_INPUT": data["input"],
                "BATCHD_OUTBOX": data["outbox"] or "",
                "BATCHD_TOTAL": str(data["request_counts"]["total"]),
                "BATCHD_COMPLETED": str(data["request_counts"]["completed"]),
                "BATCHD_FAILED": str(data["request_counts"]["failed"]),
            }
        )
        now = self.wall()
        code: int | None = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
            )
            try:
                code = await asyncio.wait_for(proc.wait(), notify.command_timeout_seconds)
                error = None if code == 0 else f"exit status {code}"
            except TimeoutError:
                proc.kill()
                await proc.wait()
                error = f"killed after {notify.command_timeout_seconds:g} s"
        except (OSError, ValueError, IndexError) as exc:
            error = f"cannot run {argv[:1]}: {exc}"
        state = "done" if error is None else "failed"
        self.journal.notification_tried(row["id"], state=state, next_at=now, error=error, at=self.wall())
        log.log(20 if error is None else 40, "notify_command", job_id=data["job_id"], exit_status=code, error=error)
