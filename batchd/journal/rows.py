"""Records to and from rows: the column lists, JSON columns as blobs, a row decoded into a ``Job`` / ``Request``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from batchd.journal.records import FinalStatus, Job, JobState, ReqState, Request

#: request states that still owe work
UNFINISHED = "('queued','running')"

JOB_COLS = (
    "j.id, j.seq, j.source, j.input_name, j.stem, j.kind, j.sha256, j.pipeline, j.pipeline_json, "
    "j.prefix_json, j.model, j.mode, j.state, j.error, j.duplicate_of, j.retry_of, j.cancel_requested, "
    "j.total, j.columns_json, j.created_at, j.started_at, j.finished_at, j.outbox_name, j.metrics_json, "
    "j.meta_json, j.file_id, f.spool, j.final, j.work_key"
)
REQ_COLS = "job_id, seq, line, custom_id, body, row, state, attempts, result, error, prompt_tokens, completion_tokens"


def load_json(raw: Any) -> Any:
    return None if raw is None else orjson.loads(raw)


def dump_json(value: Any) -> bytes | None:
    return None if value is None else orjson.dumps(value)


def job_from_row(r: Sequence[Any]) -> Job:
    return Job(
        id=r[0],
        seq=r[1],
        source=r[2],
        input_name=r[3],
        stem=r[4],
        kind=r[5],
        sha256=r[6],
        pipeline=r[7],
        pipeline_json=r[8],
        prefix_json=r[9],
        model=r[10],
        mode=r[11],
        state=JobState(r[12]),
        error=load_json(r[13]),
        duplicate_of=r[14],
        retry_of=r[15],
        cancel_requested=bool(r[16]),
        total=r[17],
        columns=load_json(r[18]) or [],
        created_at=r[19],
        started_at=r[20],
        finished_at=r[21],
        outbox_name=r[22],
        metrics=load_json(r[23]) or {},
        meta=load_json(r[24]) or {},
        file_id=r[25],
        spool=r[26],
        final=FinalStatus(r[27]) if r[27] else None,
        work_key=r[28],
    )


def request_from_row(r: Sequence[Any]) -> Request:
    return Request(
        job_id=r[0],
        seq=r[1],
        line=r[2],
        custom_id=r[3],
        body=load_json(r[4]),
        row=load_json(r[5]),
        state=ReqState(r[6]),
        attempts=r[7],
        result=load_json(r[8]),
        error=load_json(r[9]),
        prompt_tokens=r[10],
        completion_tokens=r[11],
    )
