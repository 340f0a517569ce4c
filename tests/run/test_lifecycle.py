"""The five edges of a job's life that once broke the promise "nothing lost, nothing run twice".

1. a stop near the end of a job; 2. a backend that comes back "wrong" during an outage;
3. cancel in every state (and ``cancel %``); 4. conversation mode's false truncations;
5. the duplicate key after a pipeline edit. Each test failed on the main of 2026-11-28.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from batchd.config import Settings
from batchd.intake.claim import Claimer
from batchd.intake.inbox import scan
from batchd.journal import CancelAnswer, JobState, Journal, ReqState
from batchd.run.connect import make_backend
from batchd.run.runner import JobRunner
from tests.support.emulator import Emulator
from tests.support.factories import Folders
from tests.support.running import run_daemon_once
from tests.support.runs import RunnerFactory, queued_job, write_requests
from tests.support.waiting import until

# -- 1. stop near the end of a job ----------------------------------------------------------


def test_stop_with_the_last_rows_in_flight_loses_nothing_and_is_not_completed(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    emulator.latency = 1.5  # the last calls are still out when the grace period ends
    settings = make_settings(backend={"lanes": 2}, context={"mode": "isolated"}, shutdown_grace_seconds=0.2)
    journal = Journal(settings.journal_path)

    async def go() -> tuple[JobRunner, str, int]:
        runner = make_runner(settings, journal, 6)
        try:
            task = asyncio.create_task(runner.run())
            await until(lambda: journal.counts(runner.job.id).get("queued", 0) == 0)  # all handed to lanes
            await until(lambda: len(emulator.calls) == 2)
            runner.stop.set()
            outcome = await asyncio.wait_for(task, 5)
            return runner, outcome, len(emulator.calls)
        finally:
            await make_runner.aclose()

    runner, outcome, calls = asyncio.run(go())
    assert outcome == "interrupted"
    assert calls == 2  # no lane took another request after the stop
    counts = journal.counts(runner.job.id)
    assert counts.get("running", 0) == 0 and counts.get("queued", 0) == 6 - counts.get("done", 0)
    assert journal.end_run(runner.job.id, outcome) is None  # back to the queue, never "completed"
    job = journal.job(runner.job.id)
    assert job is not None and job.state is JobState.QUEUED


def test_the_grace_period_counts_from_the_stop_and_lets_calls_in_flight_finish(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    emulator.latency = 0.3
    settings = make_settings(backend={"lanes": 2}, context={"mode": "isolated"}, shutdown_grace_seconds=1.0)
    journal = Journal(settings.journal_path)

    async def go() -> tuple[JobRunner, str]:
        runner = make_runner(settings, journal, 20)
        try:
            task = asyncio.create_task(runner.run())
            await until(lambda: runner.done >= 4 and runner.in_flight == 2)
            runner.stop.set()
            return runner, await asyncio.wait_for(task, 5)
        finally:
            await make_runner.aclose()

    runner, outcome = asyncio.run(go())
    counts = journal.counts(runner.job.id)
    assert outcome == "interrupted" and counts.get("running", 0) == 0
    assert counts["done"] == runner.done and runner.done in (6, 7, 8)  # the two in flight finished
    assert counts["queued"] == 20 - runner.done


def test_completed_is_refused_while_a_request_is_left(tmp_path: Path) -> None:
    from batchd.journal import NewRequest, RunOutcome

    journal = Journal(tmp_path / "j.sqlite3")
    with journal.transaction() as db:
        journal.create_job(job_id="j1", db=db, state=JobState.QUEUED, input_name="x", stem="x", kind="jsonl")
        journal.insert_requests("j1", [NewRequest(seq=1, line=1, custom_id="a", body={})], db)
    assert journal.start_run("j1", 0.0)
    assert journal.take_pending("j1", 10)
    assert journal.end_run("j1", RunOutcome.COMPLETED) is None  # the guard: a running row is left
    job = journal.job("j1")
    assert job is not None and job.state is JobState.QUEUED and journal.counts("j1") == {"queued": 1}


# -- 2. the backend comes back "wrong" during an outage -------------------------------------------


@pytest.mark.parametrize(("status", "code"), [(401, "unauthorized"), (403, "unauthorized"), (404, "model_not_found")])
def test_a_refusal_during_an_outage_fails_the_job_instead_of_hanging(
    make_settings: Callable[..., Settings], emulator: Emulator, status: int, code: str, make_runner: RunnerFactory
) -> None:
    from batchd.daemon import Daemon

    emulator.latency = 0.05
    settings = make_settings(backend={"lanes": 2}, context={"mode": "isolated"})
    journal = Journal(settings.journal_path)
    seen: dict[str, str] = {}

    async def go() -> tuple[JobRunner, str]:
        backend = make_backend(settings)
        runner = make_runner(settings, journal, 30, backend=backend)
        daemon = Daemon(settings=settings, journal=journal, backend=backend)
        daemon.current = runner
        try:
            task = asyncio.create_task(runner.run())
            await until(lambda: runner.done >= 3)
            emulator.down()
            await until(lambda: runner.gate.down_since is not None)
            seen["status"] = daemon.status_line()
            emulator.refuse = status
            emulator.up()
            return runner, await asyncio.wait_for(task, 10)
        finally:
            await make_runner.aclose()

    runner, outcome = asyncio.run(go())
    assert "waiting for backend" in seen["status"] and " since " in seen["status"]
    assert outcome == "failed" and runner.fatal is not None and runner.fatal.code == code
    journal.end_run(runner.job.id, outcome, error=runner.fatal.as_record())
    counts = journal.counts(runner.job.id)
    assert counts.get("queued", 0) == counts.get("running", 0) == counts.get("skipped", 0) == 0
    failed = list(journal.iter_requests(runner.job.id, [ReqState.FAILED]))
    assert failed and {r.error["code"] for r in failed if r.error} == {code}
    job = journal.job(runner.job.id)
    assert job is not None and job.final is not None and job.final.value == "failed"


# -- 3. cancel in every state -------------------------------------------------------------------


def test_cancel_while_the_backend_is_down_is_seen_within_a_second(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    emulator.latency = 0.02
    settings = make_settings(backend={"lanes": 2}, context={"mode": "isolated"})
    journal = Journal(settings.journal_path)

    async def go() -> tuple[JobRunner, str, float]:
        runner = make_runner(settings, journal, 40)
        try:
            task = asyncio.create_task(runner.run())
            await until(lambda: runner.done >= 3)
            emulator.down()
            await until(lambda: runner.gate.down_since is not None)
            loop = asyncio.get_running_loop()
            asked = loop.time()
            assert journal.request_cancel(runner.job.id) is CancelAnswer.CANCELLING
            outcome = await asyncio.wait_for(task, 5)
            return runner, outcome, loop.time() - asked
        finally:
            await make_runner.aclose()

    runner, outcome, took = asyncio.run(go())
    assert outcome == "cancelled" and took < 1.0
    assert journal.counts(runner.job.id).get("running", 0) == 0


def test_a_cancel_during_ingest_is_not_overwritten(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    journal = Journal(settings.journal_path)
    write_requests(settings.inbox / "job.jsonl", 10)
    claimer = Claimer(settings=settings, journal=journal)
    real_ingest = claimer.ingest
    claimer.ingest = lambda job_id: JobState.INGESTING  # type: ignore[method-assign]  # claimed, not read yet
    (cand,) = scan(settings.inbox)
    claimed = claimer.claim(cand)
    assert claimed is not None
    assert journal.request_cancel(claimed.job_id) is CancelAnswer.CANCELLING
    real_ingest(claimed.job_id)
    job = journal.job(claimed.job_id)
    assert job is not None and job.state is JobState.FINALIZING
    assert job.final is not None and job.final.value == "cancelled"
    assert set(journal.counts(job.id)) == {"skipped"}


def test_a_cancel_that_arrives_as_the_last_request_finishes_reports_completed(
    make_settings: Callable[..., Settings], folders: Folders, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(context={"mode": "isolated"})
    write_requests(settings.inbox / "job.jsonl", 5)
    real_flush = JobRunner.flush

    def flush(self: JobRunner, force: bool = False) -> None:
        if force:  # the run's last flush: every request has its answer, the job is still running
            self.journal.request_cancel(self.job.id)
        real_flush(self, force)

    monkeypatch.setattr(JobRunner, "flush", flush)
    run_daemon_once(settings)
    (folder,) = [p for p in folders.outbox.iterdir() if p.is_dir() and not p.name.startswith(".")]
    metrics = orjson.loads((folder / "metrics.json").read_bytes())
    assert metrics["status"] == "completed" and metrics["request_counts"]["completed"] == 5


def test_a_job_prefix_is_matched_literally(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    journal = Journal(settings.journal_path)
    job = queued_job(settings, journal, 2)
    assert [j.id for j in journal.jobs_starting_with(job.id[:5])] == [job.id] and journal.job(job.id) is not None
    for pattern in ("%", "_", job.id[:3] + "%", "_" * len(job.id), ""):
        assert journal.job(pattern) is None and journal.jobs_starting_with(pattern) == [], pattern


# -- 4. conversation mode: no false truncations -----------------------------------------------


def test_an_honest_server_gets_one_call_per_row_and_the_trigger_stays(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    settings = make_settings(context={"mode": "conversation", "num_ctx": 8192})
    journal = Journal(settings.journal_path)

    async def go() -> JobRunner:
        runner = make_runner(settings, journal, queued_job(settings, journal, 200, size=40))
        try:
            assert await runner.run() == "completed"
            return runner
        finally:
            await make_runner.aclose()

    runner = asyncio.run(go())
    m = runner.metrics
    assert len(emulator.calls) == 200
    assert m.truncations_detected == 0 and m.trim_at == settings.context.trim_at
    assert runner.budget is not None and runner.budget.window == 8192


# -- 5. duplicate means the same work ------------------------------------------------------------


def _drop_csv(inbox: Path, name: str = "cands.csv") -> None:
    folder = inbox / "scoring"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("name,text\nAda,Writes compilers.\nBob,Builds bridges.\n", encoding="utf-8")


def _claim_all(settings: Settings, journal: Journal) -> list[JobState]:
    claimer = Claimer(settings=settings, journal=journal)
    out = []
    for cand in scan(settings.inbox):
        claimed = claimer.claim(cand)
        assert claimed is not None
        out.append(claimed.state)
    return out


def test_redrop_after_a_pipeline_edit_is_new_work(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    journal = Journal(settings.journal_path)
    toml = settings.inbox / "scoring" / "pipeline.toml"
    toml.parent.mkdir()
    toml.write_text('system_prompt = "Score from 1 to 10."\nuser_template = "{name}: {text}"\n', encoding="utf-8")
    _drop_csv(settings.inbox)
    assert _claim_all(settings, journal) == [JobState.QUEUED]
    _drop_csv(settings.inbox)  # the same bytes, the same pipeline: the same work
    assert _claim_all(settings, journal) == [JobState.FINALIZING]
    toml.write_text('system_prompt = "Score from 1 to 5."\nuser_template = "{name}: {text}"\n', encoding="utf-8")
    _drop_csv(settings.inbox)  # the same bytes, another prompt: new work
    assert _claim_all(settings, journal) == [JobState.QUEUED]
    toml.write_text(
        'system_prompt = "Score from 1 to 5."\nuser_template = "{name}: {text}"\n[options]\ntemperature = 0.2\n',
        encoding="utf-8",
    )
    _drop_csv(settings.inbox)  # another option: new work
    assert _claim_all(settings, journal) == [JobState.QUEUED]
    states = [j.state for j in journal.jobs()]
    assert states.count(JobState.FINALIZING) == 1


def test_truncation_reads_missing_and_split_prompt_counts_right() -> None:
    from batchd.backends.base import ChatResult
    from tests.support.conversations import SYSTEM, conv, reply, turn, user

    c = conv(num_ctx=8192)
    for i in range(6):  # equal-length turns: every one crosses the same rounding steps
        turn(c, [SYSTEM, user(i, 300)])
    sent = c.build([SYSTEM, user(7, 300)], 64)
    full = reply(sent)
    assert c.truncation(full) is None
    # No prompt_eval_count at all (older Ollama on a cache hit): no verdict either way.
    assert (
        c.truncation(
            ChatResult(content=full.content, finish_reason="stop", prompt_tokens=0, completion_tokens=1, model="m")
        )
        is None
    )
    # Only the uncached part counted, the cached part reported beside it (prompt_eval_cached_count).
    cached = c._cached
    split = ChatResult(
        content=full.content,
        finish_reason="stop",
        prompt_tokens=full.prompt_tokens - cached,
        completion_tokens=1,
        model="m",
        cached_tokens=cached,
    )
    assert c.counted(split) == full.prompt_tokens and c.truncation(split) is None
    # A real cut is still seen.
    assert c.truncation(reply(sent, prompt=full.prompt_tokens // 2)) == "prompt_truncated"


def test_a_version_1_journal_migrates_its_final_status_and_api_tables(tmp_path: Path) -> None:
    import sqlite3

    from batchd.journal import SCHEMA_VERSION, FinalStatus
    from batchd.journal.schema import MIGRATIONS

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN; {MIGRATIONS[1]} PRAGMA user_version=1; COMMIT;")
    db.execute(
        "CREATE TABLE api_files (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, role TEXT NOT NULL, "
        "filename TEXT NOT NULL, bytes INTEGER NOT NULL DEFAULT 0, sha256 TEXT, spool TEXT, batch_id TEXT, "
        "created_at REAL NOT NULL)"
    )  # made ad hoc by an older API
    db.execute(
        "INSERT INTO jobs (id, seq, input_name, stem, kind, state, created_at, meta_json) "
        "VALUES ('old1', 1, 'a.csv', 'a', 'csv', 'finalizing', 0, ?)",
        (orjson.dumps({"final": "cancelled"}),),
    )
    db.close()
    journal = Journal(path)
    job = journal.job("old1")
    assert job is not None and job.final is FinalStatus.CANCELLED and job.work_key is None
    assert journal._query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    assert journal.api_batch("none") is None and journal.api_file("none") is None


def test_two_processes_opening_a_fresh_journal_at_once_migrate_it_once(tmp_path: Path) -> None:
    """Openers racing on a new file: the migration (one locked transaction) and, before it, the switch to
    WAL, which SQLite refuses at once with "database is locked" when another opener is mid-switch (about
    1 round in 30 before the retry). 50 rounds of 4 openers, so such a race shows here."""
    import threading

    errors: list[BaseException] = []
    for round_ in range(50):
        path = tmp_path / f"fresh{round_}.sqlite3"
        barrier = threading.Barrier(4)

        def open_it(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                Journal(path).close()
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


class DilatedClock:
    """A fake clock running 100x faster than the real one: a production-size grace (30 s) in 0.3 s."""

    SCALE = 100.0

    def __init__(self) -> None:
        import time as _time

        self._t0 = _time.monotonic()
        self._mono = _time.monotonic

    def __call__(self) -> float:
        return (self._mono() - self._t0) * self.SCALE

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.SCALE)


def test_the_grace_period_is_counted_on_the_runners_clock_from_the_stop(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    emulator.latency = 2.0  # = 200 s on the fake clock: far beyond the grace
    settings = make_settings(
        backend={"lanes": 2}, context={"mode": "isolated", "num_ctx": 4096}, shutdown_grace_seconds=30.0
    )
    journal = Journal(settings.journal_path)
    clock = DilatedClock()

    async def go() -> tuple[JobRunner, str, float, float]:
        job = queued_job(settings, journal, 6)
        runner = make_runner(settings, journal, job, sleep=clock.sleep, clock=clock, monitor_tick=0.5)
        try:
            task = asyncio.create_task(runner.run())
            await until(lambda: runner.in_flight == 2)
            await asyncio.sleep(0.2)  # 20 fake seconds of the calls go by before the stop
            stop_at = clock()
            runner.stop.set()
            outcome = await asyncio.wait_for(task, 5)
            return runner, outcome, stop_at, clock()
        finally:
            await make_runner.aclose()

    runner, outcome, stop_at, ended = asyncio.run(go())
    assert outcome == "interrupted" and runner.stopped_at is not None
    assert runner.stopped_at - stop_at < 5  # the grace clock starts at the stop ...
    assert 30 <= ended - stop_at < 45  # ... and runs its 30 s, not less for the calls' earlier time
    assert journal.counts(runner.job.id) == {"queued": 6}  # both calls abandoned, back in the queue
