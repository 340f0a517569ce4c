from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from batchd.errors import StorageError
from batchd.journal import SCHEMA_VERSION, JobState, Journal, NewBatch, NewClaim, NewRequest, Outcome, ReqState


def _job(j: Journal, job_id: str = "job1", n: int = 10) -> None:
    with j.transaction() as db:
        j.create_job(job_id=job_id, db=db, state=JobState.QUEUED, input_name="x.jsonl", stem="x", kind="jsonl")
        j.insert_requests(
            job_id, [NewRequest(seq=i, line=i, custom_id=f"c{i}", body={"messages": []}) for i in range(1, n + 1)], db
        )


def test_wal_busy_timeout_and_schema_version(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    raw = sqlite3.connect(tmp_path / "j.sqlite3")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert j._db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert j.integrity_check() == "ok"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Journal(tmp_path / "j.sqlite3").close()
    raw = sqlite3.connect(tmp_path / "j.sqlite3")
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StorageError, match="newer"):
        Journal(tmp_path / "j.sqlite3")


def test_take_pending_marks_running_in_order_and_recover_requeues(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    _job(j)
    first = j.take_pending("job1", 4)
    assert [r.seq for r in first] == [1, 2, 3, 4]
    assert j.counts("job1") == {"running": 4, "queued": 6}
    j.record("job1", [Outcome(seq=1, state=ReqState.DONE, attempts=1, result={"ok": 1}, prompt_tokens=3)])
    assert j.start_run("job1", 0.0)
    # a crash here: a new process recovers
    j2 = Journal(tmp_path / "j.sqlite3")
    assert j2.recover() == {"requests": 3, "jobs": 1, "ingesting": 0}
    assert j2.counts("job1") == {"done": 1, "queued": 9}
    assert j2.job("job1").state is JobState.QUEUED  # type: ignore[union-attr]
    assert [r.seq for r in j2.take_pending("job1", 100)] == list(range(2, 11))


def test_invalid_rows_are_not_queued_and_stream_in_order(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    with j.transaction() as db:
        j.create_job(job_id="a", db=db, state=JobState.QUEUED, input_name="a", stem="a", kind="jsonl")
        j.insert_requests(
            "a",
            [
                NewRequest(
                    seq=i,
                    line=i,
                    custom_id=str(i),
                    body=None if i % 3 == 0 else {},
                    error={"code": "x", "message": "bad"} if i % 3 == 0 else None,
                )
                for i in range(1, 7000)
            ],
            db,
        )
    assert j.counts("a")["invalid"] == 2333
    seqs = [r.seq for r in j.iter_requests("a", chunk=500)]
    assert seqs == list(range(1, 7000))


def test_ingesting_job_restarts_from_scratch(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    with j.transaction() as db:
        j.create_job(job_id="i", db=db, state=JobState.INGESTING, input_name="i", stem="i", kind="csv")
        j.insert_requests("i", [NewRequest(seq=1, line=2, custom_id="a", body={})], db)
    assert j.recover()["ingesting"] == 1
    assert j.counts("i") == {}


def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    _job(j, "x", 2)
    with pytest.raises(StorageError):
        with j.transaction() as db:
            db.execute("UPDATE requests SET state='done' WHERE job_id='x'")
            db.execute("INSERT INTO no_such_table VALUES (1)")
    assert j.counts("x") == {"queued": 2}


def test_job_takes_a_whole_id_and_jobs_starting_with_a_prefix(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    _job(j, "abc123", 1)
    _job(j, "abd456", 1)
    assert j.job("abc") is None  # job() takes a whole id, nothing less
    assert j.job("abc123").id == "abc123"  # type: ignore[union-attr]
    assert [x.id for x in j.jobs_starting_with("abc")] == ["abc123"]
    assert [x.id for x in j.jobs_starting_with("ab")] == ["abc123", "abd456"]  # ambiguous: the caller says so
    assert j.next_job().id == "abc123"  # type: ignore[union-attr]  # claim order


def _claim(job_id: str, **over: object) -> NewClaim:
    fields: dict[str, object] = {
        "job_id": job_id,
        "name": "a.jsonl",
        "inbox_path": b"a.jsonl",
        "spool": f"/spool/{job_id}.jsonl",
        "sha256": "abc",
        "size": 3,
        "mtime_ns": 7,
        "input_name": "a.jsonl",
        "stem": "a",
        "kind": "jsonl",
        "pipeline": None,
        "pipeline_json": "{}",
    }
    return NewClaim(**{**fields, **over})  # type: ignore[arg-type]


def test_claim_records_the_file_and_an_ingesting_job_and_refuses_a_second_claim(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    file_id = j.claim(_claim("first"))
    assert file_id is not None and j.find_claim(b"a.jsonl", 3, 7) == file_id
    job = j.job("first")
    assert job is not None and job.state is JobState.INGESTING and job.file_id == file_id
    assert (job.source, job.sha256, job.spool, job.pipeline_json) == ("inbox", "abc", "/spool/first.jsonl", "{}")
    assert j.unlinked_claims() == [(file_id, b"a.jsonl", 3, 7)]  # unlinked by the claimer, then marked
    # the same file claimed again (a second claimer that looked before the first committed): refused whole
    assert j.claim(_claim("second")) is None
    assert j.job("second") is None and len(j.unlinked_claims()) == 1
    assert j.claim(_claim("third", mtime_ns=8)) is not None  # rewritten since: a new file


def test_an_api_claim_writes_its_batch_in_the_same_transaction(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    upload = {"inbox_path": b"api/file-1", "mtime_ns": -1, "source": "api", "meta": {"batch_id": "batch_1"}}
    batch = NewBatch(
        batch_id="batch_1", input_file_id="file-1", output_file_id="file-o", error_file_id="file-e", metadata={"k": "v"}
    )
    assert j.claim(_claim("one", **upload), batch=batch) is not None
    assert j.unlinked_claims() == []  # nothing in the inbox to unlink
    row = j.api_batch("batch_1")
    assert row is not None and row["job_id"] == "one" and row["metadata"] == '{"k":"v"}'
    assert j.job("one").meta == {"batch_id": "batch_1"}  # type: ignore[union-attr]
    # one upload may feed several batches: no inbox identity to refuse
    assert j.claim(_claim("two", **upload), batch=NewBatch("batch_2", "file-1", "file-o2", "file-e2", None))
    # a batch that cannot be written takes its file row and job with it
    with pytest.raises(StorageError):
        j.claim(_claim("three", **upload), batch=batch)
    assert j.job("three") is None and j.api_batch_job_ids() == ["one", "two"]


def test_a_version_3_journal_gains_the_owner_column_and_keeps_its_jobs(tmp_path: Path) -> None:
    """Migration 4 adds ``files.owner_uid``: jobs claimed before it read back with no owner."""
    from batchd.journal.schema import MIGRATIONS

    raw = sqlite3.connect(tmp_path / "j.sqlite3")
    for version in (1, 2, 3):
        raw.executescript(MIGRATIONS[version])
    raw.execute(
        "INSERT INTO files (id, name, inbox_path, state, claimed_at) VALUES (1, 'a.csv', 'a.csv', 'claimed', 0)"
    )
    raw.execute(
        "INSERT INTO jobs (id, seq, file_id, input_name, stem, kind, state, created_at) "
        "VALUES ('j1', 1, 1, 'a.csv', 'a', 'csv', 'queued', 0)"
    )
    raw.execute("PRAGMA user_version=3")
    raw.commit()
    raw.close()
    j = Journal(tmp_path / "j.sqlite3")
    assert j.job("j1").owner_uid is None
    assert sqlite3.connect(tmp_path / "j.sqlite3").execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
