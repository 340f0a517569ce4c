"""The team's records in the journal: the queue as the scheduler sees it (``schedule.Entry``), priorities,
when a job went back to the queue, jobs paused for attention and the ``.cancel`` files refused."""

from __future__ import annotations

import time
from typing import Any

import orjson

from batchd.journal.connection import Connection
from batchd.journal.records import Job
from batchd.journal.rows import JOB_COLS, dump_json, job_from_row
from batchd.schedule import Entry


class TeamRecords(Connection):
    """Who goes first and who may stop what (``Journal`` mixes this in)."""

    def queue_entries(self, default_priority: int, *, at_least: int = 1) -> list[Entry]:
        """Every queued or running job with the facts the scheduler ranks on; none when there are fewer
        than ``at_least`` (the running job's yield check needs a rival before it counts requests)."""
        jobs = self._query(
            "SELECT id, seq, state, priority, pipeline_json, COALESCE(waiting_since, created_at), model, "
            "meta_json, attention_json, lifted FROM jobs WHERE state IN ('queued','running') ORDER BY seq"
        )
        if len(jobs) < max(1, at_least):
            return []
        left = dict(
            self._query(
                "SELECT job_id, COUNT(*) FROM requests WHERE state IN ('queued','running') "
                f"AND job_id IN ({','.join('?' * len(jobs))}) GROUP BY job_id",
                [j[0] for j in jobs],
            )
        )
        out = []
        for job_id, seq, state, priority, pipeline_json, since, model, meta_json, attention, lifted in jobs:
            if priority is None:
                own = orjson.loads(pipeline_json).get("priority") if pipeline_json else None
                priority = own if isinstance(own, int) else default_priority
            meta = orjson.loads(meta_json) if meta_json else {}
            num_ctx = meta.get("num_ctx") if isinstance(meta, dict) else None
            out.append(
                Entry(
                    id=job_id,
                    seq=seq,
                    priority=int(priority),
                    remaining=int(left.get(job_id, 0)),
                    waiting_since=float(since),
                    model=model,
                    num_ctx=num_ctx if isinstance(num_ctx, int) else None,
                    running=state == "running",
                    attention=attention is not None,
                    lifted=bool(lifted),
                )
            )
        return out

    def set_priority(self, job_id: str, priority: int) -> bool:
        """``batchd priority JOB N`` or an API batch's ``metadata.priority``; False when the job is gone."""
        with self.transaction() as db:
            return db.execute("UPDATE jobs SET priority=? WHERE id=?", (priority, job_id)).rowcount == 1

    def back_in_queue(self, job_id: str, at: float | None = None, *, preempted: bool = False) -> None:
        """The job yielded the runner (to another job: ``preempted``): its wait (aging) starts again now."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET waiting_since=?, lifted=0, preemptions=preemptions+? WHERE id=?",
                (time.time() if at is None else at, int(preempted), job_id),
            )

    def preemptions(self) -> int:
        """How often any job yielded to another, over the journal's life (Prometheus)."""
        rows = self._query("SELECT COALESCE(SUM(preemptions), 0) FROM jobs")
        return int(rows[0][0])

    def set_lifted(self, job_id: str, lifted: bool) -> None:
        """The job is picked because it had aged (it then yields only to a higher priority), or is not."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET lifted=? WHERE id=?", (int(lifted), job_id))

    # -- paused for attention (fail-fast) ----------------------------------------------

    def pause_for_attention(self, job_id: str, why: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET attention_json=? WHERE id=?", (dump_json(why), job_id))

    def paused_jobs(self) -> list[Job]:
        """Jobs paused for attention (queued, skipped by the scheduler until resumed)."""
        rows = self._query(
            f"SELECT {JOB_COLS} FROM jobs j LEFT JOIN files f ON f.id=j.file_id "
            "WHERE j.attention_json IS NOT NULL AND j.state IN ('queued','running') ORDER BY j.seq"
        )
        return [job_from_row(r) for r in rows]

    def resume_attention(self, job_id: str) -> bool:
        """``batchd retry`` / ``resume`` of a paused job: it runs again where it stopped; False if not paused."""
        with self.transaction() as db:
            return (
                db.execute(
                    "UPDATE jobs SET attention_json=NULL, waiting_since=? WHERE id=? AND attention_json IS NOT NULL",
                    (time.time(), job_id),
                ).rowcount
                == 1
            )

    def failed_samples(self, job_id: str, code: str, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` of the job's most recent failed requests with this error code (custom_id, message)."""
        out: list[dict[str, Any]] = []
        for custom_id, raw in self._query(
            "SELECT custom_id, error FROM requests WHERE job_id=? AND state='failed' ORDER BY seq DESC LIMIT 500",
            (job_id,),
        ):
            error = orjson.loads(raw) if raw else {}
            if isinstance(error, dict) and error.get("code") == code:
                out.append({"custom_id": custom_id, "message": str(error.get("message", ""))[:300]})
                if len(out) == n:
                    break
        return out

    # -- .cancel files ------------------------------------------------------------------

    def newest_unfinished_from(self, inbox_path: bytes) -> Job | None:
        """The newest job claimed from this inbox path (``folder/NAME`` or ``NAME``) that has not finished."""
        rows = self._query(
            f"SELECT {JOB_COLS} FROM jobs j JOIN files f ON f.id=j.file_id WHERE f.inbox_path=? "
            "AND j.source='inbox' AND j.state IN ('ingesting','queued','running') ORDER BY j.seq DESC LIMIT 1",
            (inbox_path,),
        )
        return job_from_row(rows[0]) if rows else None

    def add_refusal(self, *, name: str, uid: int, user: str, job_id: str | None, reason: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO cancel_refusals (t, name, uid, user, job_id, reason) VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), name, uid, user, job_id, reason),
            )
            # a flood of them keeps the newest few hundred
            db.execute("DELETE FROM cancel_refusals WHERE rowid <= (SELECT MAX(rowid) FROM cancel_refusals) - 200")

    def refusals(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest refused ``.cancel`` files, newest first."""
        return self._query_named(
            "SELECT t, name, uid, user, job_id, reason FROM cancel_refusals ORDER BY rowid DESC LIMIT ?", (limit,)
        )

    # -- notifications owed ---------------------------------------------------------------

    def add_notification(self, *, event_id: str, job_id: str, channel: str, body: bytes, at: float) -> bool:
        """Owe one notification of a job's final state on a channel (``webhook``, ``command``); False when
        it is already owed or given (one per job and channel, whatever restarts happen)."""
        with self.transaction() as db:
            return (
                db.execute(
                    "INSERT OR IGNORE INTO notifications (id, job_id, channel, body, created_at, next_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (event_id, job_id, channel, body, at, at),
                ).rowcount
                == 1
            )

    def due_notifications(self, now: float, limit: int = 20) -> list[dict[str, Any]]:
        return self._query_named(
            "SELECT id, job_id, channel, body, created_at, attempts FROM notifications "
            "WHERE state='pending' AND next_at<=? ORDER BY next_at LIMIT ?",
            (now, limit),
        )

    def notification_tried(
        self, event_id: str, *, state: str, next_at: float, error: str | None, at: float | None = None
    ) -> None:
        """One delivery attempt's end: ``delivered``/``done``, ``failed`` (given up), or still ``pending``."""
        with self.transaction() as db:
            db.execute(
                "UPDATE notifications SET state=?, attempts=attempts+1, next_at=?, last_error=?, done_at=? WHERE id=?",
                (state, next_at, error, at, event_id),
            )

    def notification_counts(self) -> dict[str, int]:
        """Notifications by state (Prometheus)."""
        return {str(s): int(n) for s, n in self._query("SELECT state, COUNT(*) FROM notifications GROUP BY state")}
