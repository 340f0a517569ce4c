"""Records to and from rows: the column lists, JSON columns as blobs, a row decoded into a ``Job`` / ``Request``.

Rows are read by column name: each SELECT list is written once here, and where a named column lands in
the row is derived from that list, so adding or moving a column cannot shift the others. (Tuples indexed
through a name table, not ``sqlite3.Row``: a 170,000-line job streams its requests through
``request_from_row``, and ``sqlite3.Row``'s name lookup took 1.0 s for them against 0.05 s by index.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from batchd.journal.records import FinalStatus, Job, JobState, ReqState, Request

#: request states that still owe work
UNFINISHED = "('queued','running')"


def columns(*exprs: str) -> tuple[str, dict[str, int]]:
    """A SELECT list, and the position of each column in its rows by name (``j.id`` is named ``id``)."""
    names = [expr.rpartition(" AS ")[2] if " AS " in expr else expr.rpartition(".")[2] for expr in exprs]
    return ", ".join(exprs), {name: i for i, name in enumerate(names)}


JOB_COLS, _JOB = columns(
    "j.id", "j.seq", "j.source", "j.input_name", "j.stem", "j.kind", "j.sha256", "j.pipeline", "j.pipeline_json",
    "j.prefix_json", "j.model", "j.mode", "j.state", "j.error", "j.duplicate_of", "j.retry_of", "j.cancel_requested",
    "j.total", "j.columns_json", "j.created_at", "j.started_at", "j.finished_at", "j.outbox_name", "j.metrics_json",
    "j.meta_json", "j.file_id", "f.spool", "j.final", "j.work_key", "f.owner_uid",
    "j.priority", "j.attention_json",
)  # fmt: skip
REQ_COLS, REQ = columns(
    "job_id", "seq", "line", "custom_id", "body", "row", "state", "attempts", "result", "error", "prompt_tokens",
    "completion_tokens", "url",
    "(SELECT data FROM vectors v WHERE v.job_id = requests.job_id AND v.seq = requests.seq) AS vector",
)  # fmt: skip


#: the same columns for requests about to run: their vectors (none yet, or a crashed attempt's, replaced when
#: the answer is recorded) are not read, which spares ``take_pending`` a lookup into ``vectors`` per row
TAKE_COLS = REQ_COLS.replace(REQ_COLS.rpartition(", ")[2], "NULL AS vector")


def load_json(raw: Any) -> Any:
    return None if raw is None else orjson.loads(raw)


def dump_json(value: Any) -> bytes | None:
    return None if value is None else orjson.dumps(value)


def job_from_row(r: Sequence[Any]) -> Job:
    c = _JOB
    final = r[c["final"]]
    return Job(
        id=r[c["id"]],
        seq=r[c["seq"]],
        source=r[c["source"]],
        input_name=r[c["input_name"]],
        stem=r[c["stem"]],
        kind=r[c["kind"]],
        sha256=r[c["sha256"]],
        pipeline=r[c["pipeline"]],
        pipeline_json=r[c["pipeline_json"]],
        prefix_json=r[c["prefix_json"]],
        model=r[c["model"]],
        mode=r[c["mode"]],
        state=JobState(r[c["state"]]),
        error=load_json(r[c["error"]]),
        duplicate_of=r[c["duplicate_of"]],
        retry_of=r[c["retry_of"]],
        cancel_requested=bool(r[c["cancel_requested"]]),
        total=r[c["total"]],
        columns=load_json(r[c["columns_json"]]) or [],
        created_at=r[c["created_at"]],
        started_at=r[c["started_at"]],
        finished_at=r[c["finished_at"]],
        outbox_name=r[c["outbox_name"]],
        metrics=load_json(r[c["metrics_json"]]) or {},
        meta=load_json(r[c["meta_json"]]) or {},
        file_id=r[c["file_id"]],
        spool=r[c["spool"]],
        final=FinalStatus(final) if final else None,
        work_key=r[c["work_key"]],
        owner_uid=r[c["owner_uid"]],
        priority=r[c["priority"]],
        attention=load_json(r[c["attention_json"]]),
    )


def request_from_row(r: Sequence[Any]) -> Request:
    c = REQ
    return Request(
        job_id=r[c["job_id"]],
        seq=r[c["seq"]],
        line=r[c["line"]],
        custom_id=r[c["custom_id"]],
        body=load_json(r[c["body"]]),
        row=load_json(r[c["row"]]),
        state=ReqState(r[c["state"]]),
        attempts=r[c["attempts"]],
        result=load_json(r[c["result"]]),
        error=load_json(r[c["error"]]),
        prompt_tokens=r[c["prompt_tokens"]],
        completion_tokens=r[c["completion_tokens"]],
        url=r[c["url"]],
        vector=r[c["vector"]],
    )
