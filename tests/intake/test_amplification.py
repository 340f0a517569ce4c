"""Amplification and expiry: a small file of junk lines stays small; API uploads and outputs expire and are capped."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from batchd.config import Settings
from batchd.journal import JobState, Journal
from tests.support.emulator import Emulator
from tests.support.factories import Folders, read_jsonl, write_jsonl
from tests.support.running import run_batchd

# -- limits.max_invalid_lines ---------------------------------------------------------------


def test_a_file_of_junk_lines_fails_early_with_one_summary(folders: Folders, emulator: Emulator) -> None:
    (folders.inbox / "junk.jsonl").write_bytes(b"{}\n" * 20_000)  # 60 KB
    env = folders.env(emulator.url, BATCHD_LIMITS__MAX_INVALID_LINES="50")
    proc = run_batchd(env, "run", "--once")
    assert proc.returncode == 0, proc.stderr
    out = folders.outbox / "junk"
    errors = read_jsonl(out / "errors.jsonl")
    assert len(errors) == 52  # the first 50 one by one, line 51 that tipped it, and one summary
    assert [e["line"] for e in errors[:51]] == list(range(1, 52))
    summary = errors[-1]["error"]
    assert summary["code"] == "too_many_invalid_lines" and "50" in summary["message"]
    metrics = orjson.loads((out / "metrics.json").read_bytes())
    assert metrics["status"] == "failed"
    assert emulator.chat_count == 0
    written = sum(p.stat().st_size for p in out.iterdir()) - (out / "input.jsonl").stat().st_size
    assert written < 100_000  # was ~7.6 MB of records for these 20,000 lines
    assert (folders.state / "journal.sqlite3").stat().st_size < 2_000_000


def test_a_few_bad_lines_under_the_cap_still_run_the_good_ones(folders: Folders, emulator: Emulator) -> None:
    write_jsonl(folders.inbox / "mixed.jsonl", 30, bad_every=3)
    env = folders.env(emulator.url, BATCHD_LIMITS__MAX_INVALID_LINES="10")
    assert run_batchd(env, "run", "--once").returncode == 0
    metrics = orjson.loads((folders.outbox / "mixed" / "metrics.json").read_bytes())
    assert metrics["status"] == "completed" and metrics["request_counts"]["completed"] == 20


# -- API retention and storage cap ------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_uploads_and_finished_batches_expire_after_retention(make_settings: Callable[..., Settings]) -> None:
    from batchd.api.retention import DAY, Retention
    from batchd.api.store import ApiStore

    settings = make_settings(api={"retention_days": 30})
    journal = Journal(settings.journal_path)
    try:
        store = ApiStore(journal)
        clock = _Clock()
        retention = Retention(settings=settings, journal=journal, store=store, clock=clock)
        spool = settings.state_dir / "up.jsonl"
        spool.write_bytes(b"{}\n")
        store.add_input(file_id="file-a", filename="a.jsonl", size=3, sha256="x", spool=str(spool))
        outbox_dirs = {}
        for job_id, state in (("jdone", JobState.COMPLETED), ("jrun", JobState.RUNNING), ("jother", JobState.FAILED)):
            folder = settings.outbox / job_id
            folder.mkdir(parents=True)
            # jother's folder name holds someone else's results: never removed
            named = "not-me" if job_id == "jother" else job_id
            (folder / "metrics.json").write_bytes(orjson.dumps({"job_id": named}))
            (folder / "results.jsonl").write_bytes(b"r" * 100)
            with journal.transaction() as db:
                journal.create_job(
                    job_id=job_id, db=db, state=state, input_name="api:a", stem="a", kind="jsonl", source="api"
                )
                store.add_batch(
                    db,
                    batch_id=f"batch_{job_id}",
                    job_id=job_id,
                    input_file_id="file-a",
                    output_file_id=f"file-o{job_id}",
                    error_file_id=f"file-e{job_id}",
                    metadata=None,
                )
            journal.update_job(job_id, outbox_name=job_id)
            outbox_dirs[job_id] = folder
        assert retention.stored_bytes() == 3 + sum(f.stat().st_size for d in outbox_dirs.values() for f in d.iterdir())
        clock.now += 29 * DAY
        assert retention.expire() == 0
        clock.now += 2 * DAY
        assert retention.expire() == 3  # file-a, batch_jdone, batch_jother
        assert store.file("file-a") is None and not spool.exists()
        assert store.batch("batch_jdone") is None and not outbox_dirs["jdone"].exists()
        assert store.file("file-ojdone") is None
        assert store.batch("batch_jrun") is not None and outbox_dirs["jrun"].exists()  # kept until it finishes
        assert store.batch("batch_jother") is None and outbox_dirs["jother"].exists()  # not its folder
    finally:
        journal.close()


def test_the_api_refuses_uploads_over_its_storage_cap(api_with: Callable[..., Any], tmp_path: Path) -> None:
    from tests.support.api import spool_files, upload

    h = api_with(max_stored_bytes=5000)
    assert upload(h, b"x" * 3000).status_code == 200
    r = upload(h, b"y" * 3000)
    assert r.status_code == 507, r.text
    assert r.json()["error"]["code"] == "storage_limit_reached"
    assert len(spool_files(h.settings)) == 1  # the refused one left nothing behind
    file_id = httpx.get(h.url + "/v1/files").json()["data"][0]["id"]
    assert httpx.delete(f"{h.url}/v1/files/{file_id}").status_code == 200
    assert upload(h, b"y" * 3000).status_code == 200  # room again
